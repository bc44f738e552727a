"""Official SAM 2 checkpoints: where they live, how to verify them, where they are cached.

A preset name maps to a :class:`CheckpointInfo` (download URL, sha256, file name, size). The first
use of a preset downloads the file into a per-user cache with pooch; later uses find it there and
need no network. Every file is checked against its sha256 before it is handed out, and a download
only appears under its final name once it is complete and verified.

Only the standard library, pooch and requests (pooch's HTTP client) are imported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pooch

__all__ = [
    "CACHE_ENV_VAR",
    "PRESET_NAMES",
    "CheckpointHashMismatch",
    "CheckpointInfo",
    "CheckpointNotFound",
    "CheckpointUnavailable",
    "ProgressCallback",
    "cache_dir",
    "checkpoint_info",
    "checkpoint_path",
    "fetch_checkpoint",
    "resolve_checkpoint",
]

CACHE_ENV_VAR = "NAPARI_SAM2_CACHE"
"""Environment variable that, when set, replaces the per-user cache folder."""

ProgressCallback = Callable[[int, "int | None"], None]
"""``callback(done_bytes, total_bytes)``; ``total_bytes`` is None when the server does not say."""

# (connect, read) seconds. A stalled mirror should fail with a clear message rather than hang,
# but a slow link must still be able to fetch the 900 MB large checkpoint.
_HTTP_TIMEOUT = (15.0, 60.0)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """One downloadable checkpoint.

    Attributes:
        name: preset name, e.g. ``"sam2.1_hiera_tiny"``.
        url: https address of the ``.pt`` file.
        sha256: lower-case hex digest (64 characters) of the file.
        filename: name of the file in the cache folder (the last part of ``url``).
        size: file size in bytes, or None where it is not recorded.
    """

    name: str
    url: str
    sha256: str
    filename: str
    size: int | None = None


def _official(name: str, release: str, sha256: str, size: int | None = None) -> CheckpointInfo:
    filename = f"{name}.pt"
    url = f"https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{filename}"
    return CheckpointInfo(name=name, url=url, sha256=sha256, filename=filename, size=size)


# SAM 2 (July 2024, release folder 072824) and SAM 2.1 (September 2024, folder 092824).
_PRESETS: tuple[CheckpointInfo, ...] = (
    _official(
        "sam2_hiera_tiny",
        "072824",
        "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
    ),
    _official(
        "sam2_hiera_small",
        "072824",
        "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
    ),
    _official(
        "sam2_hiera_base_plus",
        "072824",
        "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
    ),
    _official(
        "sam2_hiera_large",
        "072824",
        "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
    ),
    _official(
        "sam2.1_hiera_tiny",
        "092824",
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
        156008466,
    ),
    _official(
        "sam2.1_hiera_small",
        "092824",
        "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
        184416285,
    ),
    _official(
        "sam2.1_hiera_base_plus",
        "092824",
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
        323606802,
    ),
    _official(
        "sam2.1_hiera_large",
        "092824",
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
        898083611,
    ),
)

_BY_NAME: dict[str, CheckpointInfo] = {info.name: info for info in _PRESETS}

PRESET_NAMES: list[str] = [info.name for info in _PRESETS]
"""The eight official preset names: SAM 2 tiny, small, base_plus, large, then SAM 2.1 likewise."""


class CheckpointUnavailable(RuntimeError):
    """The checkpoint could not be downloaded (no network, server error, interrupted transfer)."""


class CheckpointHashMismatch(RuntimeError):
    """A checkpoint's sha256 differs from the expected one; the file was not kept."""


class CheckpointNotFound(FileNotFoundError, ValueError):
    """A user-supplied checkpoint path does not exist or is not a file.

    It is both a FileNotFoundError (what it is) and a ValueError (the project's type for bad
    input).
    """


def checkpoint_info(name: str) -> CheckpointInfo:
    """The table entry of preset ``name``; ValueError listing the valid names if it is unknown."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown SAM 2 preset {name!r}. Valid presets are: {', '.join(PRESET_NAMES)}."
        ) from None


def cache_dir() -> Path:
    """Folder that holds downloaded checkpoints.

    ``$NAPARI_SAM2_CACHE`` when set (``~`` is expanded), else the per-user cache folder of the
    operating system (``pooch.os_cache("napari-sam2")``, e.g. ``~/.cache/napari-sam2`` on Linux).
    The folder is not created here.
    """
    override = os.environ.get(CACHE_ENV_VAR, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(pooch.os_cache("napari-sam2"))


def checkpoint_path(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where preset ``name`` is (or will be) stored; the file need not exist."""
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    return folder / checkpoint_info(name).filename


class _CallbackProgress:
    """Adapts ``callback(done_bytes, total_bytes)`` to the progress-bar protocol pooch expects.

    pooch's HTTPDownloader sets ``total`` (0 when the server sends no length), calls ``update``
    with its chunk size after every chunk (so the last call over-counts), then ``reset``,
    ``update(total)`` and ``close``. This adapter clamps to the total and reports each distinct
    count once, so the callback sees strictly increasing numbers that end at the total.
    """

    def __init__(self, callback: ProgressCallback) -> None:
        self._callback = callback
        self._total: int | None = None
        self._done = 0
        self._last_reported = -1

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = int(value) if value else None

    def update(self, n: int) -> None:
        self._done += int(n)
        if self._total is not None:
            self._done = min(self._done, self._total)
        if self._done > self._last_reported:
            self._last_reported = self._done
            self._callback(self._done, self._total)

    def reset(self) -> None:
        self._done = 0

    def close(self) -> None:
        pass


class _HashRecordingDownloader:
    """Wraps a pooch downloader and remembers the sha256 of what it wrote.

    pooch deletes the temporary file when the hash check fails; recording the digest here lets
    the error message give the actual hash without parsing pooch's wording.
    """

    def __init__(self, inner: pooch.HTTPDownloader) -> None:
        self._inner = inner
        self.actual_sha256: str | None = None

    def __call__(self, url: str, output_file: str, pooch_obj: object) -> None:
        self.actual_sha256 = None
        self._inner(url, output_file, pooch_obj)
        self.actual_sha256 = pooch.file_hash(output_file, alg="sha256")


def _progress_bar_for(progress: bool | ProgressCallback) -> bool | _CallbackProgress:
    if isinstance(progress, bool):
        return progress
    if callable(progress):
        return _CallbackProgress(progress)
    raise TypeError(
        "progress must be True (a bar on stderr), False (silent) or a callable "
        f"(done_bytes, total_bytes); got {type(progress).__name__}."
    )


def _file_matches(path: Path, sha256: str, size: int | None) -> bool:
    """True if ``path`` is a file of the expected size (when known) and sha256."""
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return pooch.file_hash(str(path), alg="sha256") == sha256


def _unavailable_message(url: str, destination: Path, reason: str) -> str:
    return (
        f"Could not download the SAM 2 checkpoint from {url} ({reason}).\n"
        f"Download it by other means and put it at exactly:\n    {destination}\n"
        "or pass the path of a local checkpoint file instead of a preset download "
        "(e.g. checkpoint=/path/to/file.pt)."
    )


def fetch_checkpoint(
    name: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool | ProgressCallback = True,
    url: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Path of the verified checkpoint of preset ``name``, downloading it on first use.

    Args:
        name: one of :data:`PRESET_NAMES`.
        cache: folder to use instead of :func:`cache_dir`.
        progress: True for a tqdm bar on stderr, False for none, or a callable
            ``(done_bytes: int, total_bytes: int | None)`` called with increasing counts.
        url: download from here instead of the official address (a mirror, or tests).
        sha256: expected hex digest instead of the table's (needed when ``url`` serves a
            different file, as in tests).

    Returns:
        ``<cache>/<file name>``, a complete file whose sha256 matches.

    A file already at that path with the right hash is returned without touching the network.
    A file there with the wrong hash (e.g. a manual copy gone wrong) is deleted and downloaded
    again. The download goes to a temporary file in the same folder and is renamed only after
    the hash matches, so an interrupted or corrupted transfer never leaves a file under the final
    name.

    Raises:
        ValueError: unknown preset name, or a malformed ``sha256``.
        CheckpointUnavailable: no network, server error or interrupted transfer; the message names
            the URL and the exact path to place the file at by hand.
        CheckpointHashMismatch: the downloaded file's sha256 differs; nothing is kept.
    """
    info = checkpoint_info(name)
    expected = (sha256 if sha256 is not None else info.sha256).strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}.")
    source = url if url is not None else info.url
    # The recorded size belongs to the official file; an overridden hash means another file.
    size = info.size if sha256 is None else None
    destination = checkpoint_path(name, cache)
    progressbar = _progress_bar_for(progress)

    if destination.exists():
        if _file_matches(destination, expected, size):
            return destination
        _log.warning(
            "Cached checkpoint %s does not match its sha256; deleting it and downloading again.",
            destination,
        )
        destination.unlink()

    destination.parent.mkdir(parents=True, exist_ok=True)
    downloader = _HashRecordingDownloader(
        pooch.HTTPDownloader(progressbar=progressbar, timeout=_HTTP_TIMEOUT)
    )
    # Imported here so that importing this module stays cheap.
    import requests

    try:
        pooch.retrieve(
            url=source,
            known_hash=f"sha256:{expected}",
            fname=destination.name,
            path=destination.parent,
            downloader=downloader,
        )
    except requests.exceptions.HTTPError as err:
        status = err.response.status_code if err.response is not None else "unknown"
        raise CheckpointUnavailable(
            _unavailable_message(source, destination, f"the server answered HTTP {status}")
        ) from err
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
        # ChunkedEncodingError (a connection dropped mid-transfer) is not a ConnectionError in
        # requests, so it is handled in the next clause with its own wording.
        raise CheckpointUnavailable(
            _unavailable_message(
                source, destination, f"no connection to the server: {type(err).__name__}"
            )
        ) from err
    except requests.exceptions.RequestException as err:
        raise CheckpointUnavailable(
            _unavailable_message(
                source, destination, f"the transfer was interrupted: {type(err).__name__}"
            )
        ) from err
    except ValueError as err:
        if downloader.actual_sha256 is None:
            raise
        # pooch raises ValueError for a hash mismatch after deleting its temporary file.
        destination.unlink(missing_ok=True)
        raise CheckpointHashMismatch(
            f"The file downloaded from {source} is corrupt or not the expected checkpoint: "
            f"sha256 expected {expected}, actual {downloader.actual_sha256}. Nothing was kept; "
            "try again, or download it by other means and place it at "
            f"{destination}."
        ) from err
    return destination


def resolve_checkpoint(
    preset: str | None,
    checkpoint: str | os.PathLike[str] | None = None,
    **fetch_kwargs: object,
) -> Path:
    """The checkpoint file to load for ``preset``.

    Args:
        preset: preset name, used to download when ``checkpoint`` is None.
        checkpoint: a local ``.pt`` file chosen by the user; used as is (no hash check, so
            fine-tunes such as MedSAM2 work) and no download happens.
        **fetch_kwargs: passed to :func:`fetch_checkpoint` (cache, progress, url, sha256).

    Raises:
        CheckpointNotFound: ``checkpoint`` does not exist or is not a file.
        ValueError: ``checkpoint`` is None and ``preset`` is unknown or None.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise CheckpointNotFound(
                f"Checkpoint file {path} does not exist. Check the path, or leave the checkpoint "
                "empty to download the preset's official weights."
            )
        if not path.is_file():
            raise CheckpointNotFound(
                f"Checkpoint path {path} is not a file (a folder?). Give the path of the .pt file."
            )
        return path
    if preset is None:
        raise ValueError("Give a preset name or a checkpoint file; both were None.")
    return fetch_checkpoint(preset, **fetch_kwargs)  # type: ignore[arg-type]
