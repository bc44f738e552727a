"""The feature store: MiB per frame by compression, and the first click on a reopened volume.

``size`` computes one frame's features at each input size (sam2.1 tiny, random weights, the
object-score head biased as in the other benchmarks) on two images: scikit-image's ``camera``
(a real photograph) and a frame of the synthetic stack of ``_harness``. It rounds them to
bfloat16 as the store does and compresses the three levels with each candidate codec
(numcodecs, as zarr runs them), printing MiB per frame, the ratio to uncompressed and the median
encode and decode times over ``--repeats``. Then it writes the frame through a real
:class:`~napari_sam2.engine.feature_store.FeatureStore` and prints the bytes its chunks take on
disk::

    python bench/feature_store.py size --image-sizes 512 1024

``reopen`` fills a store for a ``--frames`` long lazy synthetic stack (frames ``--click-frame``
and 0 computed, every other frame a copy of frame 0's features, so the store is full and
its size real without encoding every frame), then, in a fresh subprocess, opens a new
Tracker over the stack in each mode and times the first click on ``--click-frame``:

- ``store``: ``Tracker(..., feature_store=PATH)``: the signature (intensity range, content
  sample, weights hash: the hash cached on the model is dropped before every repeat) and one
  frame read from the store;
- ``compute``: ``Tracker(...)`` without a store: the frame's features are computed;

and, in each, a second click on the same slice (its features in the RAM cache: a cached click).
The two modes alternate in one child process (the order swapping every repeat, after one
warm-up repeat of each that is dropped: it imports zarr), so drifting load on a shared machine
touches both alike. Tracker construction and the click are timed
separately; the model's build is not timed. The store's chunks are in the page cache (they were
just written): a store read from a cold disk adds its read time (4 MiB a frame at 1024)::

    python bench/feature_store.py reopen --frames 200 --image-size 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _harness import OBJECT_SCORE_BIAS, SyntheticStack, cpu_model

MIB = 2**20
PRESET = "sam2.1_hiera_tiny"
MODES = ("store", "compute")


def _model(image_size: int):
    from napari_sam2.model import build_sam2

    torch.manual_seed(0)
    model = build_sam2(PRESET, image_size=image_size)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)
    return model.eval()


# ---------------------------------------------------------------------- size


def _codecs():
    from numcodecs import Blosc, Zstd

    return {
        "none": None,
        "blosc zstd 1 bitshuffle": Blosc("zstd", 1, Blosc.BITSHUFFLE),
        "blosc zstd 3 bitshuffle": Blosc("zstd", 3, Blosc.BITSHUFFLE),
        "blosc zstd 1 shuffle": Blosc("zstd", 1, Blosc.SHUFFLE),
        "blosc zstd 5 shuffle": Blosc("zstd", 5, Blosc.SHUFFLE),
        "blosc lz4 5 bitshuffle": Blosc("lz4", 5, Blosc.BITSHUFFLE),
        "blosc lz4 5 shuffle": Blosc("lz4", 5, Blosc.SHUFFLE),
        "zstd 3 (no shuffle)": Zstd(3),
    }


def _levels(model, image: np.ndarray, precision: str):
    from napari_sam2.engine.tracker import Tracker

    tracker = Tracker(model, image, precision=precision)
    tracker.prepare(0)
    return [level.to(torch.bfloat16).contiguous() for level in tracker.features.get(0)]


def _chunk_bytes(path: Path) -> int:
    """Bytes of the chunk files of a store (the arrays' metadata and the marks left out)."""
    return sum(
        f.stat().st_size
        for name in ("s0", "s1", "top")
        for f in (path / name).rglob("*")
        if f.is_file() and f.name != "zarr.json" and not f.name.startswith(".")
    )


def size(args) -> None:
    import skimage.data

    from napari_sam2.engine.data_signature import data_signature
    from napari_sam2.engine.feature_store import COMPRESSION, FeatureStore

    images = {
        "camera": skimage.data.camera(),
        "synthetic": SyntheticStack(1, 1024, 1024).frame(0),
    }
    rows = []
    for image_size in args.image_sizes:
        model = _model(image_size)
        for image_name, image in images.items():
            levels = _levels(model, image, args.precision)
            bits = [level.view(torch.int16).numpy() for level in levels]
            raw = sum(b.nbytes for b in bits)
            for name, codec in _codecs().items():
                if codec is None:
                    rows.append((image_size, image_name, name, raw / MIB, 1.0, 0.0, 0.0))
                    continue
                encode, decode = [], []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    encoded = [codec.encode(b) for b in bits]
                    encode.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    for e in encoded:
                        codec.decode(e)
                    decode.append(time.perf_counter() - start)
                packed = sum(len(e) for e in encoded)
                rows.append(
                    (
                        image_size,
                        image_name,
                        name,
                        packed / MIB,
                        raw / packed,
                        1e3 * statistics.median(encode),
                        1e3 * statistics.median(decode),
                    )
                )
            with tempfile.TemporaryDirectory() as folder:
                signature = data_signature(image, model)
                store = FeatureStore.open(Path(folder) / "f.zarr", signature)
                store.write(0, levels)
                on_disk = _chunk_bytes(store.path)
            rows.append(
                (
                    image_size,
                    image_name,
                    "FeatureStore chunks on disk",
                    on_disk / MIB,
                    raw / on_disk,
                    0.0,
                    0.0,
                )
            )
    print(
        f"# cpu: {cpu_model()}, torch threads {torch.get_num_threads()}, precision "
        f"{args.precision}, random weights of {PRESET}; the store's codec: {COMPRESSION}"
    )
    print(
        "input  image      codec                          MiB/frame  ratio  encode ms  decode ms"
    )
    for image_size, image_name, name, mib, ratio, enc, dec in rows:
        print(
            f"{image_size:5d}  {image_name:9s}  {name:30.30s} {mib:9.3f}  {ratio:5.2f}  "
            f"{enc:9.1f}  {dec:9.1f}"
        )


# ---------------------------------------------------------------------- reopen


def _fill(path: Path, stack, model, click_frame: int, precision: str) -> float:
    """A full store for ``stack``: ``click_frame`` and 0 computed, the others copies of 0."""
    from napari_sam2.engine.tracker import Tracker

    tracker = Tracker(model, stack, precision=precision, feature_store=path)
    start = time.perf_counter()
    tracker.prepare(click_frame)
    tracker.prepare(0)
    copy = tracker.feature_store.read(0)
    for frame in tracker.feature_store.missing():
        tracker.feature_store.write(frame, copy)
    assert not tracker.feature_store.missing()
    return time.perf_counter() - start


def _child(args) -> None:
    """Both modes in this fresh process, alternating (so load drifts touch both alike): print
    JSON timings per mode."""
    from napari_sam2.engine.data_signature import _WEIGHTS_HASH_ATTRIBUTE
    from napari_sam2.engine.tracker import Tracker

    model = _model(args.image_size)
    stack = SyntheticStack(args.frames, args.height, args.width)
    centre = stack.centres(args.click_frame)[0]
    click = np.array([[centre[1], centre[0]]], dtype=np.float32)
    nudged = click + np.array([[3.0, 2.0]], dtype=np.float32)
    out = {mode: {"open": [], "first": [], "cached": []} for mode in MODES}
    for repeat in range(-1, args.repeats):  # repeat -1 warms up (imports zarr) and is dropped
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
            if hasattr(model, _WEIGHTS_HASH_ATTRIBUTE):
                delattr(model, _WEIGHTS_HASH_ATTRIBUTE)  # as in a new session
            store = args.store if mode == "store" else None
            start = time.perf_counter()
            tracker = Tracker(
                model,
                stack,
                precision=args.precision,
                feature_store=store,
                fill_feature_store=False,
            )
            opened = time.perf_counter()
            logits = tracker.set_prompts(args.click_frame, 1, points=click, labels=[1])
            first = time.perf_counter()
            tracker.set_prompts(args.click_frame, 1, points=nudged, labels=[1])
            cached = time.perf_counter()
            if repeat < 0:
                continue
            out[mode]["open"].append(opened - start)
            out[mode]["first"].append(first - opened)
            out[mode]["cached"].append(cached - first)
            out[mode]["mask_pixels"] = int((logits[1] > 0).sum())
    print(json.dumps(out))


def reopen(args) -> None:
    from napari_sam2.engine.feature_store import FeatureStore

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "features.zarr"
        stack = SyntheticStack(args.frames, args.height, args.width)
        fill_seconds = _fill(
            path, stack, _model(args.image_size), args.click_frame, args.precision
        )
        signature = FeatureStore.read_signature(path)
        on_disk = _chunk_bytes(path) / MIB
        command = [sys.executable, __file__, "_child", "--store", str(path)]
        for option in (
            "frames",
            "image_size",
            "height",
            "width",
            "click_frame",
            "repeats",
            "precision",
            "threads",
        ):
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results = json.loads(done.stdout.strip().splitlines()[-1])
    med = {
        m: {k: statistics.median(v) * 1e3 for k, v in r.items() if isinstance(v, list)}
        for m, r in results.items()
    }
    print(
        f"# cpu: {cpu_model()}, threads {args.threads}, precision {args.precision}, "
        f"random weights of {PRESET}, input {args.image_size}, {args.frames} frames of "
        f"{args.height}x{args.width} uint16, click on frame {args.click_frame}, "
        f"median of {args.repeats}"
    )
    print(
        f"store: {on_disk:.1f} MiB of chunks ({on_disk / args.frames:.2f} MiB/frame), "
        f"filled in {fill_seconds:.1f} s, signature {signature['content_hash'][:12]}..."
    )
    print("mode      open ms  first click ms  open+first ms  cached click ms  mask px")
    for mode in ("store", "compute"):
        m = med[mode]
        print(
            f"{mode:8s} {m['open']:8.1f} {m['first']:15.1f} {m['open'] + m['first']:14.1f} "
            f"{m['cached']:16.1f} {results[mode]['mask_pixels']:8d}"
        )
    ratio = (med["store"]["open"] + med["store"]["first"]) / (
        med["compute"]["open"] + med["compute"]["first"]
    )
    print(
        f"first click with the store / without: {ratio:.3f}; "
        f"with the store / cached click: {med['store']['first'] / med['store']['cached']:.2f}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_size = sub.add_parser("size", help="MiB per frame by compression")
    p_size.add_argument("--image-sizes", type=int, nargs="+", default=[512, 1024])
    p_size.add_argument("--repeats", type=int, default=5)
    p_reopen = sub.add_parser("reopen", help="first click on a reopened volume")
    p_child = sub.add_parser("_child")
    for p in (p_reopen, p_child):
        p.add_argument("--frames", type=int, default=200)
        p.add_argument("--image-size", type=int, default=1024)
        p.add_argument("--height", type=int, default=1024)
        p.add_argument("--width", type=int, default=1024)
        p.add_argument("--click-frame", type=int, default=137)
        p.add_argument("--repeats", type=int, default=3)
    p_child.add_argument("--store")
    for p in (p_size, p_reopen, p_child):
        p.add_argument("--precision", default="auto")
        p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"size": size, "reopen": reopen, "_child": _child}[args.command](args)


if __name__ == "__main__":
    main()
