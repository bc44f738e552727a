"""napari layers <-> SAM 2 engine adapters. Imports napari, never Qt.

:class:`AnnotatorController` is the scriptable annotator behind the dock widget.
"""

from .controller import INTENSITY_MODES, AnnotatorController
from .jobs import Job, SyncRunner

__all__ = ["INTENSITY_MODES", "AnnotatorController", "Job", "SyncRunner"]
