"""Checkpoint registry: preset table, cache folder, verified downloads from a loopback server.

Every download here goes to 127.0.0.1; no test touches any other network.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_sam2.model import registry
from napari_sam2.model.registry import (
    PRESET_NAMES,
    CheckpointHashMismatch,
    CheckpointInfo,
    CheckpointNotFound,
    CheckpointUnavailable,
    cache_dir,
    checkpoint_info,
    fetch_checkpoint,
    resolve_checkpoint,
)

PRESET = "sam2.1_hiera_tiny"
PAYLOAD_BYTES = 5000  # not a multiple of pooch's 1024-byte chunk, to exercise the last chunk


class _FakeServer:
    """A loopback HTTP server serving ``payload`` at every path; counts GET requests.

    ``mode`` is "ok" (whole body), "truncated" (announces the full Content-Length, sends half,
    closes the connection), "missing" (HTTP 404), "trickle" (one byte every 20 ms, never
    stalling but taking ~100 s), "stall" (half, then silence for 3 s) or "slow" (waits 0.5 s
    before answering, so concurrent fetches overlap).
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.mode = "ok"
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests += 1
                if server.mode == "missing":
                    self.send_error(404)
                    return
                body = server.payload
                if server.mode == "slow":
                    time.sleep(0.5)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "trickle":
                    try:
                        for index in range(len(body)):
                            self.wfile.write(body[index : index + 1])
                            self.wfile.flush()
                            time.sleep(0.02)
                    except OSError:
                        pass  # the client gave up
                elif server.mode == "stall":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    time.sleep(3)
                elif server.mode == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/{PRESET}.pt"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


@pytest.fixture
def payload() -> bytes:
    return os.urandom(PAYLOAD_BYTES)


@pytest.fixture
def server(payload: bytes):
    srv = _FakeServer(payload)
    yield srv
    srv.stop()


@pytest.fixture
def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _closed_port_url() -> str:
    """A loopback URL on a port that nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{PRESET}.pt"


def _final_path(cache: Path) -> Path:
    return cache / f"{PRESET}.pt"


def _leftovers(cache: Path) -> list[str]:
    """Files in the cache folder, apart from the folder of lock files."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if p.name != ".locks")


# --- the preset table ---------------------------------------------------------------------------


def test_table_has_the_eight_official_presets_in_order():
    assert PRESET_NAMES == [
        "sam2_hiera_tiny",
        "sam2_hiera_small",
        "sam2_hiera_base_plus",
        "sam2_hiera_large",
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_small",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
    ]
    for name in PRESET_NAMES:
        info = checkpoint_info(name)
        assert isinstance(info, CheckpointInfo)
        assert info.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256), name
        assert info.url.startswith("https://"), name
        assert info.filename == f"{name}.pt"
        assert info.url.endswith("/" + info.filename), name
    hashes = [checkpoint_info(n).sha256 for n in PRESET_NAMES]
    assert len(set(hashes)) == len(hashes)
    assert checkpoint_info("sam2.1_hiera_large").size == 898083611


def test_checkpoint_info_is_frozen():
    info = checkpoint_info(PRESET)
    with pytest.raises(AttributeError):
        info.url = "https://example.invalid/x.pt"  # type: ignore[misc]


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="sam2_hiera_huge") as excinfo:
        checkpoint_info("sam2_hiera_huge")
    for name in PRESET_NAMES:
        assert name in str(excinfo.value)
    with pytest.raises(ValueError, match="unknown SAM 2 model .* the presets are"):
        fetch_checkpoint("nope", cache="/nonexistent", progress=False)


# --- cache folder -------------------------------------------------------------------------------


def test_env_var_moves_the_cache(monkeypatch, tmp_path, server, sha):
    monkeypatch.delenv(registry.CACHE_ENV_VAR, raising=False)
    default = cache_dir()
    assert "napari-sam2" in str(default)

    moved = tmp_path / "elsewhere"
    monkeypatch.setenv(registry.CACHE_ENV_VAR, str(moved))
    assert cache_dir() == moved
    path = fetch_checkpoint(PRESET, progress=False, url=server.url, sha256=sha)
    assert path == moved / f"{PRESET}.pt"
    assert path.is_file()


# --- downloads ----------------------------------------------------------------------------------


def test_good_hash_downloads_once_then_uses_cache_offline(server, payload, sha, cache):
    path = fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert path == _final_path(cache)
    assert path.read_bytes() == payload
    assert server.requests == 1
    assert _leftovers(cache) == [path.name]  # no temporary file left behind

    server.stop()
    again = fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert again == path
    assert again.read_bytes() == payload
    assert server.requests == 1


def test_bad_hash_raises_and_keeps_nothing(server, sha, cache):
    wrong = "0" * 64
    with pytest.raises(CheckpointHashMismatch) as excinfo:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=wrong)
    message = str(excinfo.value)
    assert wrong in message
    assert sha in message  # the actual hash of what was served
    assert server.url in message
    assert not _final_path(cache).exists()
    assert _leftovers(cache) == []


def test_corrupt_cached_file_is_replaced(server, payload, sha, cache):
    cache.mkdir(parents=True)
    _final_path(cache).write_bytes(b"not a checkpoint")
    path = fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert path.read_bytes() == payload
    assert server.requests == 1
    assert _leftovers(cache) == [path.name]


def test_a_cached_file_is_kept_when_no_verified_replacement_arrives(server, sha, cache):
    cache.mkdir(parents=True)
    _final_path(cache).write_bytes(b"the user's only copy")
    with pytest.raises(CheckpointUnavailable, match="it was kept") as info:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=_closed_port_url(), sha256=sha)
    assert "no connection" in str(info.value)
    assert _final_path(cache).read_bytes() == b"the user's only copy"
    with pytest.raises(CheckpointHashMismatch, match="was kept"):
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256="1" * 64)
    server.mode = "truncated"
    with pytest.raises(CheckpointUnavailable, match="interrupted"):
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert _final_path(cache).read_bytes() == b"the user's only copy"
    assert _leftovers(cache) == [_final_path(cache).name]


def test_a_trickling_server_meets_the_deadline(server, sha, cache, monkeypatch):
    server.mode = "trickle"
    started = time.monotonic()
    with pytest.raises(CheckpointUnavailable) as info:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha,
                         timeout=0.6)  # fmt: skip
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "did not finish within 0.6 s" in message and "of 5,000 bytes arrived" in message
    assert server.url in message and str(_final_path(cache)) in message
    assert _leftovers(cache) == []
    monkeypatch.setenv(registry.DOWNLOAD_TIMEOUT_ENV_VAR, "0.4")
    with pytest.raises(CheckpointUnavailable, match="within 0.4 s"):
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)


def test_a_stall_is_a_stall_not_no_connection(server, sha, cache, monkeypatch):
    server.mode = "stall"
    monkeypatch.setenv(registry.STALL_TIMEOUT_ENV_VAR, "0.5")
    with pytest.raises(CheckpointUnavailable) as info:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    message = str(info.value)
    assert "stopped sending data for 0.5 s after 2,500 of 5,000 bytes" in message
    assert "no connection" not in message
    assert _leftovers(cache) == []


@pytest.mark.parametrize("bad", ["0", "-3", "soon", "nan", "inf"])
def test_bad_timeouts_are_refused(cache, sha, monkeypatch, bad):
    monkeypatch.setenv(registry.STALL_TIMEOUT_ENV_VAR, bad)
    with pytest.raises(ValueError, match=registry.STALL_TIMEOUT_ENV_VAR):
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=_closed_port_url(), sha256=sha)
    monkeypatch.delenv(registry.STALL_TIMEOUT_ENV_VAR)
    with pytest.raises(ValueError, match="positive"):
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=_closed_port_url(), sha256=sha,
                         timeout=-1)  # fmt: skip


def test_partial_files_of_killed_runs_are_cleaned_up(server, payload, sha, cache):
    cache.mkdir(parents=True)
    stale = cache / f"{PRESET}.pt.4242-deadbeef.part"
    stale.write_bytes(b"half of a download")
    other = cache / "sam2.1_hiera_large.pt.1-aaaa.part"  # another preset's: not ours to touch
    other.write_bytes(b"x")
    path = fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert path.read_bytes() == payload
    assert _leftovers(cache) == sorted([path.name, other.name])


def test_concurrent_thread_fetches_end_with_one_good_file(server, payload, sha, cache):
    cache.mkdir(parents=True)
    _final_path(cache).write_bytes(b"corrupt")
    server.mode = "slow"
    results, errors = [], []

    def fetch():
        try:
            results.append(
                fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
            )
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert results == [_final_path(cache)] * 4
    assert _final_path(cache).read_bytes() == payload
    assert server.requests == 1  # the others waited for the lock and found the verified file
    assert _leftovers(cache) == [_final_path(cache).name]


_FETCH_CHILD = """
import sys
from napari_sam2.model.registry import fetch_checkpoint
path = fetch_checkpoint(sys.argv[1], cache=sys.argv[2], progress=False, url=sys.argv[3],
                        sha256=sys.argv[4])
print(path)
"""


def test_concurrent_process_fetches_end_with_one_good_file(server, payload, sha, cache):
    server.mode = "slow"
    argv = [sys.executable, "-c", _FETCH_CHILD, PRESET, str(cache), server.url, sha]
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
        assert out.strip() == str(_final_path(cache))
    assert _final_path(cache).read_bytes() == payload
    assert server.requests == 1
    assert _leftovers(cache) == [_final_path(cache).name]


def test_interrupted_download_keeps_nothing_and_next_call_restarts(server, payload, sha, cache):
    server.mode = "truncated"
    with pytest.raises(CheckpointUnavailable) as excinfo:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert server.url in str(excinfo.value)
    assert "interrupted" in str(excinfo.value)
    assert not _final_path(cache).exists()
    assert _leftovers(cache) == []

    server.mode = "ok"
    path = fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert path.read_bytes() == payload
    assert server.requests == 2


def test_offline_raises_unavailable_naming_url_and_destination(sha, cache):
    url = _closed_port_url()
    with pytest.raises(CheckpointUnavailable) as excinfo:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=url, sha256=sha)
    message = str(excinfo.value)
    assert url in message
    assert str(_final_path(cache)) in message
    assert "local" in message
    assert "no connection to the server" in message and "refused" in message.lower()
    assert isinstance(excinfo.value, RuntimeError)
    assert not _final_path(cache).exists()


def test_http_error_raises_unavailable(server, sha, cache):
    server.mode = "missing"
    with pytest.raises(CheckpointUnavailable, match="HTTP 404") as excinfo:
        fetch_checkpoint(PRESET, cache=cache, progress=False, url=server.url, sha256=sha)
    assert server.url in str(excinfo.value)
    assert _leftovers(cache) == []


def test_callable_progress_gets_increasing_counts_ending_at_total(server, sha, cache):
    calls: list[tuple[int, int | None]] = []
    fetch_checkpoint(
        PRESET,
        cache=cache,
        progress=lambda done, total: calls.append((done, total)),
        url=server.url,
        sha256=sha,
    )
    assert calls  # one call per block that arrived (64 KiB reads: here one or a few)
    done = [d for d, _ in calls]
    assert all(b > a for a, b in zip(done, done[1:], strict=False))
    assert {t for _, t in calls} == {PAYLOAD_BYTES}
    assert done[-1] == PAYLOAD_BYTES


def test_bad_progress_argument_is_a_type_error(server, sha, cache):
    with pytest.raises(TypeError, match="progress"):
        fetch_checkpoint(PRESET, cache=cache, progress="yes", url=server.url, sha256=sha)


def test_malformed_sha256_is_rejected(cache):
    with pytest.raises(ValueError, match="64 hexadecimal"):
        fetch_checkpoint(
            PRESET, cache=cache, progress=False, url="http://127.0.0.1:9/x", sha256="ab"
        )


# --- resolve_checkpoint -------------------------------------------------------------------------


def test_local_file_is_used_as_is(tmp_path, cache):
    local = tmp_path / "my_finetune.pt"
    local.write_bytes(b"weights")
    path = resolve_checkpoint(PRESET, local, cache=cache, url=_closed_port_url())
    assert path == local
    assert local.read_bytes() == b"weights"
    assert not cache.exists()  # nothing was downloaded or created


def test_missing_local_file_names_the_path(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointNotFound, match=re.escape(str(missing))) as excinfo:
        resolve_checkpoint(PRESET, missing)
    assert isinstance(excinfo.value, FileNotFoundError)
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(CheckpointNotFound, match="not a file"):
        resolve_checkpoint(PRESET, tmp_path)


def test_resolve_without_local_file_fetches(server, payload, sha, cache):
    path = resolve_checkpoint(
        PRESET, None, cache=cache, progress=False, url=server.url, sha256=sha
    )
    assert path == _final_path(cache)
    assert path.read_bytes() == payload


def test_progress_true_draws_a_bar_on_stderr(server, payload, sha, cache, capsys):
    path = fetch_checkpoint(PRESET, cache=cache, progress=True, url=server.url, sha256=sha)
    assert path.read_bytes() == payload
    assert "5.00k/5.00k" in capsys.readouterr().err  # tqdm: 1000-based units, done/total
