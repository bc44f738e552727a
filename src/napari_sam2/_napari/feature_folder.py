"""The dock's "keep image features on disk": one folder of feature stores, one store per image.

A feature store (:class:`~napari_sam2.engine.feature_store.FeatureStore`) is keyed by the data
signature of the frames the tracker reads and the model
(:func:`~napari_sam2.engine.data_signature.data_signature`). The annotator keeps the stores of
every image in one folder and finds an image's store by its signature, not by its file name:

1. every ``*.zarr`` store in the folder whose signature equals this image's is a match, and the
   tracker reads and fills it (stores made by ``napari-sam2 precompute`` count, whatever their
   name);
2. otherwise a new store is made, named after the image and its signature,
   ``<image name>-<12 hex digits of the signature's sha256>.zarr``, so two images, planes,
   pyramid levels or models never share a name;
3. a store of the *same pixels* (shape, dtype, axes, sampled content) made with other settings
   (another model or weights, input size, intensity range) is never used; the note says which
   settings differ, so the user can go back to them or delete that store.

Nothing here imports Qt. The folder scan reads each store's attributes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine.feature_store import FeatureStore, FeatureStoreError, signature_differences

__all__ = [
    "DATA_FIELDS",
    "StoreChoice",
    "choose_store",
    "default_folder",
    "store_name",
    "use_feature_folder",
]

#: Signature fields that say which pixels, read along which axes: a store that agrees on all of
#: them holds this image's slices, made with other settings when other fields differ.
DATA_FIELDS = (
    "shape", "dtype", "axis", "channel_axis", "layout", "num_frames", "frame_shape",
    "content_hash",
)  # fmt: skip
#: Environment variable naming the default folder.
FOLDER_VARIABLE = "NAPARI_SAM2_FEATURES"


def default_folder() -> Path:
    """``$NAPARI_SAM2_FEATURES``, else ``~/.cache/napari-sam2/features``."""
    named = os.environ.get(FOLDER_VARIABLE, "").strip()
    if named:
        return Path(named).expanduser()
    return Path.home() / ".cache" / "napari-sam2" / "features"


def store_name(image_name: str, signature: dict) -> str:
    """``<image name>-<12 hex digits>.zarr``: the image's name made safe for a file name, and
    the start of the sha256 of the signature (as JSON with sorted keys)."""
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(image_name)).strip("._") or "image"
    return f"{safe[:60]}-{digest}.zarr"


@dataclass
class StoreChoice:
    """The store an image's tracker uses, and the note the dock shows about it.

    Attributes:
        store: the open store (found or new), or None when none could be made.
        found: whether it existed with this signature (its features are reused).
        note: one or two sentences for the user.
    """

    store: FeatureStore | None
    found: bool
    note: str


def _stores_in(folder: Path) -> list[tuple[Path, dict]]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.zarr")):
        signature = FeatureStore.read_signature(path) if path.is_dir() else None
        if signature is not None:
            found.append((path, signature))
    return found


def choose_store(folder, signature: dict, image_name: str) -> StoreChoice:
    """Open the store of ``folder`` that matches ``signature``, or make one (see the module's
    docstring); never raises for a store or folder problem, which goes into the note instead.

    Args:
        folder: the folder of feature stores (made when missing).
        signature: the data signature of the tracker's frames and model.
        image_name: the napari layer's name, for the new store's name and the note.
    """
    folder = Path(folder).expanduser()
    try:
        stores = _stores_in(folder)
    except OSError as err:
        return StoreChoice(None, False, f"The feature folder {str(folder)!r} cannot be read "
                           f"({err}); image features are computed as usual.")  # fmt: skip
    unsuited = []
    for path, stored in stores:
        differences = signature_differences(stored, signature)
        if not differences:
            try:
                store = FeatureStore.open(path, signature, create=False)
            except (FeatureStoreError, OSError) as err:
                unsuited.append(f"{path.name}: {err}")
                continue
            count = store.count()
            return StoreChoice(
                store,
                True,
                f"Image features of {image_name!r} found on disk: {path.name} holds {count} of "
                f"{store.num_frames} slice(s); a click there needs no feature computation.",
            )
        if not {field for field, _ in differences} & set(DATA_FIELDS):
            told = "; ".join(words for _, words in differences)
            unsuited.append(f"{path.name} was made for {told}")
    path = folder / store_name(image_name, signature)
    why = ""
    if unsuited:
        why = (
            f" A store of this image is in the folder but is not used, because "
            f"{' and '.join(unsuited)}; choose those settings again to use it, or delete it."
        )
    try:
        store = FeatureStore.open(path, signature, create=True)
    except (FeatureStoreError, OSError) as err:
        return StoreChoice(None, False, f"Image features cannot be kept on disk: {err}.{why}")
    return StoreChoice(
        store,
        False,
        f"Image features of {image_name!r} are kept on disk in {path.name} (in "
        f"{str(folder)!r}) as they are computed.{why}",
    )


def use_feature_folder(tracker, folder, image_name: str) -> str:
    """Give ``tracker`` the store of ``folder`` that fits its frames and model (found, or new
    and filled as features are computed); returns the note for the user. Reads the signature's
    pixel sample (a few frames) and hashes the weights once per model, so call it off the main
    thread."""
    try:
        from ..engine.data_signature import data_signature

        signature = data_signature(tracker)
    except ImportError as err:
        return f"Image features cannot be kept on disk: {err}."
    choice = choose_store(folder, signature, image_name)
    # The tracker reads the RAM cache, then this store, then computes (and fills the store).
    tracker.feature_store = choice.store
    tracker.fill_feature_store = choice.store is not None
    return choice.note
