"""Inference engine: lazy frames, feature cache, tracker. Imports torch and numpy, never a GUI."""
