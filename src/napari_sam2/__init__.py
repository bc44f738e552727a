"""Segment Anything 2 for napari. The package root holds the version only."""

__version__ = "0.1.0"
