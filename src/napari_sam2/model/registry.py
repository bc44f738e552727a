"""Official SAM 2 checkpoints: where they live, how to verify them, where they are cached.

A preset name maps to a :class:`CheckpointInfo` (download URL, sha256, file name, size). The first
use of a preset downloads the file into a per-user cache; later uses find it there and need no
network. Downloads are made to hold up under bad networks, interruptions and races:

- a file is downloaded to a temporary ``<name>.<id>.part`` file in the cache folder, verified
  against its sha256 and only then renamed into place; a file already in the cache is never
  removed before a verified replacement is there (a copy placed by hand stays if the download
  fails);
- an overall deadline (:data:`DOWNLOAD_TIMEOUT_ENV_VAR`, default 2 hours) and a stall timeout
  (:data:`STALL_TIMEOUT_ENV_VAR`, default 60 s without a byte) end a download that hangs or
  trickles, and errors name the URL, the path and the precise cause;
- concurrent fetches of one preset, from threads or processes, take a file lock
  (``<cache>/.locks/<name>.lock``, with ``filelock``): one downloads, the others wait and then
  use its verified file;
- partial files left by killed runs are removed by the next fetch of the same preset.

Only the standard library, pooch (for the cache folder), requests and filelock are imported here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pooch

from .config import unknown_preset

__all__ = [
    "CACHE_ENV_VAR",
    "DOWNLOAD_TIMEOUT_ENV_VAR",
    "STALL_TIMEOUT_ENV_VAR",
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

DOWNLOAD_TIMEOUT_ENV_VAR = "NAPARI_SAM2_DOWNLOAD_TIMEOUT"
"""Seconds a whole download may take (default 7200: the 900 MB large file at ~1 Mbit/s)."""

STALL_TIMEOUT_ENV_VAR = "NAPARI_SAM2_STALL_TIMEOUT"
"""Seconds without a byte from the server (or to connect) before a download is given up."""

DEFAULT_DOWNLOAD_TIMEOUT = 7200.0
DEFAULT_STALL_TIMEOUT = 60.0
_CHUNK_BYTES = 1 << 16
_PART_SUFFIX = ".part"
_LOCK_FOLDER = ".locks"

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
        raise unknown_preset(name) from None


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


class _Progress:
    """Reports ``(done_bytes, total_bytes)`` to a callback or a tqdm bar, strictly increasing."""

    def __init__(self, progress: bool | ProgressCallback) -> None:
        if not isinstance(progress, bool) and not callable(progress):
            raise TypeError(
                "progress must be True (a bar on stderr), False (silent) or a callable "
                f"(done_bytes, total_bytes); got {type(progress).__name__}."
            )
        self._progress = progress
        self._bar = None
        self._done = -1

    def __call__(self, done: int, total: int | None) -> None:
        if done <= self._done or self._progress is False:
            return
        self._done = done
        if callable(self._progress) and not isinstance(self._progress, bool):
            self._progress(done, total)
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=True)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _seconds(value: float | None, env_var: str, default: float) -> float:
    """A positive number of seconds: ``value``, else ``$env_var``, else ``default``."""
    source = f"the {env_var} environment variable"
    if value is None:
        text = os.environ.get(env_var, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{source} must be a number of seconds, got {text!r}") from None
    else:
        source = "the timeout"
    if isinstance(value, bool) or not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{source} must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_matches(path: Path, sha256: str, size: int | None) -> bool:
    """True if ``path`` is a file of the expected size (when known) and sha256."""
    try:
        if not path.is_file():
            return False
        if size is not None and path.stat().st_size != size:
            return False
        return _sha256_of(path) == sha256
    except OSError:
        return False


def _unavailable_message(url: str, destination: Path, reason: str, kept: bool = False) -> str:
    text = f"Could not download the SAM 2 checkpoint from {url} to {destination}: {reason}.\n"
    if kept:
        text += (
            f"The file already at {destination} does not match the official sha256; it was "
            "kept. If it is a fine-tune, pass it as a local checkpoint file instead.\n"
        )
    return text + (
        f"Download it by other means and put it at exactly:\n    {destination}\n"
        "or pass the path of a local checkpoint file instead of a preset download "
        "(e.g. checkpoint=/path/to/file.pt)."
    )


class _Failure(Exception):
    """A download problem, in words, raised inside :func:`_download`."""


def _remove_stale_parts(destination: Path) -> None:
    """Remove partial files of ``destination`` left by killed runs (called under the lock)."""
    for leftover in destination.parent.glob(f"{destination.name}.*{_PART_SUFFIX}"):
        try:
            leftover.unlink()
            _log.info("Removed %s, left by an interrupted download.", leftover)
        except OSError:
            pass


def _download(
    url: str, target: Path, progress: _Progress, deadline_s: float, stall_s: float
) -> None:
    """Stream ``url`` into ``target``; raise :class:`_Failure` with the precise cause."""
    import requests

    started = time.monotonic()
    done = 0
    total: int | None = None
    try:
        with requests.get(
            url,
            stream=True,
            timeout=(stall_s, stall_s),
            headers={"Accept-Encoding": "identity"},
        ) as response:
            if response.status_code >= 400:
                reason = f" {response.reason}" if response.reason else ""
                raise _Failure(f"the server answered HTTP {response.status_code}{reason}")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            raw = response.raw
            # read1 returns what has arrived, so a trickling server still meets the deadline
            read = getattr(raw, "read1", None) or raw.read
            with open(target, "wb") as handle:
                while True:
                    if time.monotonic() - started > deadline_s:
                        raise _Failure(
                            f"the download did not finish within {deadline_s:g} s "
                            f"({_bytes_text(done, total)} arrived; the deadline is set by the "
                            f"timeout argument or {DOWNLOAD_TIMEOUT_ENV_VAR})"
                        )
                    chunk = read(_CHUNK_BYTES)
                    if not chunk:
                        break
                    handle.write(chunk)
                    done += len(chunk)
                    progress(done, total)
                handle.flush()
                os.fsync(handle.fileno())
    except _Failure:
        raise
    except requests.exceptions.ConnectTimeout as err:
        raise _Failure(
            f"no answer while connecting for {stall_s:g} s (connect timeout; "
            f"{STALL_TIMEOUT_ENV_VAR} sets it)"
        ) from err
    except (requests.exceptions.ReadTimeout, TimeoutError) as err:
        raise _Failure(
            f"the server stopped sending data for {stall_s:g} s after "
            f"{_bytes_text(done, total)} (stall timeout; {STALL_TIMEOUT_ENV_VAR} sets it)"
        ) from err
    except requests.exceptions.ConnectionError as err:
        if done or total is not None:
            raise _Failure(
                f"the transfer was interrupted after {_bytes_text(done, total)} "
                f"({_root_cause(err)})"
            ) from err
        raise _Failure(f"no connection to the server ({_root_cause(err)})") from err
    except requests.exceptions.RequestException as err:
        raise _Failure(
            f"the transfer was interrupted after {_bytes_text(done, total)} ({_root_cause(err)})"
        ) from err
    except OSError as err:  # writing: a full disk, no permission
        raise _Failure(f"writing {target} failed: {err.strerror or err}") from err
    except Exception as err:  # urllib3 raises its own types while streaming
        if "timed out" in str(err).lower():
            raise _Failure(
                f"the server stopped sending data for {stall_s:g} s after "
                f"{_bytes_text(done, total)} (stall timeout; {STALL_TIMEOUT_ENV_VAR} sets it)"
            ) from err
        raise _Failure(
            f"the transfer was interrupted after {_bytes_text(done, total)} ({_root_cause(err)})"
        ) from err
    if total is not None and done != total:
        raise _Failure(
            f"the transfer was interrupted after {_bytes_text(done, total)} (the connection "
            "closed early)"
        )


def _bytes_text(done: int, total: int | None) -> str:
    return f"{done:,} of {total:,} bytes" if total is not None else f"{done:,} bytes"


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, shortly: e.g. 'Connection refused'."""
    current: BaseException = err
    seen = set()
    while True:
        seen.add(id(current))
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = current.__cause__ or current.__context__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        current = inner
    text = str(current)
    if "] " in text and text.startswith("<"):
        text = text.split(": ", 1)[-1]
    text = " ".join(text.split())
    return f"{type(current).__name__}: {text[:160]}" if text else type(current).__name__


def fetch_checkpoint(
    name: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool | ProgressCallback = True,
    url: str | None = None,
    sha256: str | None = None,
    timeout: float | None = None,
    stall_timeout: float | None = None,
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
        timeout: seconds the whole download may take; default ``$NAPARI_SAM2_DOWNLOAD_TIMEOUT``
            or 7200.
        stall_timeout: seconds to connect, and seconds without a byte, before giving up;
            default ``$NAPARI_SAM2_STALL_TIMEOUT`` or 60.

    Returns:
        ``<cache>/<file name>``, a complete file whose sha256 matches.

    A file already at that path with the right hash is returned without touching the network.
    A file there with the wrong hash (e.g. a manual copy gone wrong) is replaced only once a
    verified download is complete; if the download fails it stays as it was. The download goes
    to a temporary file in the same folder and is renamed only after the hash matches. Fetches
    of the same file from several threads or processes are serialised by a file lock: the first
    downloads, the others then find its verified file.

    Raises:
        ValueError: unknown preset name, a malformed ``sha256`` or timeout.
        CheckpointUnavailable: no connection, a server error, a stall, the deadline passed, an
            interrupted transfer, or the file could not be written; the message names the URL,
            the path and the cause, and the exact path to place the file at by hand.
        CheckpointHashMismatch: the downloaded file's sha256 differs; nothing new is kept.
    """
    info = checkpoint_info(name)
    expected = (sha256 if sha256 is not None else info.sha256).strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}.")
    deadline_s = _seconds(timeout, DOWNLOAD_TIMEOUT_ENV_VAR, DEFAULT_DOWNLOAD_TIMEOUT)
    stall_s = _seconds(stall_timeout, STALL_TIMEOUT_ENV_VAR, DEFAULT_STALL_TIMEOUT)
    source = url if url is not None else info.url
    # The recorded size belongs to the official file; an overridden hash means another file.
    size = info.size if sha256 is None else None
    destination = checkpoint_path(name, cache)
    reporter = _Progress(progress)

    if _file_matches(destination, expected, size):
        return destination
    try:
        (destination.parent / _LOCK_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointUnavailable(
            _unavailable_message(
                source, destination, f"the cache folder cannot be created ({err.strerror})"
            )
        ) from err

    from filelock import FileLock, Timeout

    lock = FileLock(str(destination.parent / _LOCK_FOLDER / f"{destination.name}.lock"))
    try:
        # Another fetch may hold it for a whole download; wait as long as one may take.
        with lock.acquire(timeout=deadline_s + stall_s):
            return _fetch_locked(
                source, destination, expected, size, reporter, deadline_s, stall_s
            )
    except Timeout as err:
        raise CheckpointUnavailable(
            _unavailable_message(
                source,
                destination,
                f"another download of this file (lock {lock.lock_file}) did not finish within "
                f"{deadline_s + stall_s:g} s",
            )
        ) from err
    finally:
        reporter.close()


def _fetch_locked(
    source: str,
    destination: Path,
    expected: str,
    size: int | None,
    reporter: _Progress,
    deadline_s: float,
    stall_s: float,
) -> Path:
    # Another thread or process may have finished the file while we waited for the lock.
    if _file_matches(destination, expected, size):
        return destination
    _remove_stale_parts(destination)
    kept = destination.exists()
    if kept:
        _log.warning(
            "Cached checkpoint %s does not match its sha256; downloading a replacement (the "
            "file stays until the new one is verified).",
            destination,
        )
    part = destination.with_name(
        f"{destination.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{_PART_SUFFIX}"
    )
    try:
        try:
            _download(source, part, reporter, deadline_s, stall_s)
        except _Failure as failure:
            raise CheckpointUnavailable(
                _unavailable_message(source, destination, str(failure), kept)
            ) from failure.__cause__
        actual = _sha256_of(part)
        if actual != expected:
            raise CheckpointHashMismatch(
                f"The file downloaded from {source} is corrupt or not the expected checkpoint: "
                f"sha256 expected {expected}, actual {actual}. The download was discarded"
                + (f" and the file already at {destination} was kept" if kept else "")
                + "; try again, or download it by other means and place it at "
                f"{destination}."
            )
        os.replace(part, destination)
    finally:
        part.unlink(missing_ok=True)
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
