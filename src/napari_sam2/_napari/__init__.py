"""napari layers <-> SAM 2 engine adapters. Imports napari, never Qt.

:class:`~.annotator.Annotator` is the scriptable annotator behind the dock widget; its
:class:`~.state.AnnotatorState` is the one state the dock binds to.
"""

from .annotator import Annotator, annotator_for
from .jobs import Job, SyncRunner
from .state import INTENSITY_MODES, AnnotatorState

__all__ = ["INTENSITY_MODES", "Annotator", "AnnotatorState", "Job", "SyncRunner", "annotator_for"]
