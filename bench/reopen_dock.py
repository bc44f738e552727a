"""The "Reopen" figure in the dock: the first click on a slice after reopening a volume, with the
dock's feature store ("Keep image features on disk") and without it.

Opens napari (needs a display: run it under ``xvfb-run -a``) three times on the same synthetic
volume, with the SAM 2 annotator dock and its thread worker, as a user would:

1. **fill**: keep features on disk, click ``--slices`` slices (each click computes that slice's
   features and writes them to the store); close the window;
2. **reopen with the store**: a new window on the same volume, the same folder: the dock finds
   the store; the first click on each of those slices is timed;
3. **reopen without the store**: a new window, the setting off: the first click on each slice
   (a full feature computation) is timed, then a second click on the same slice (features
   cached in RAM), the cached-click reference.

Windows 2 and 3 are open together and their clicks interleaved slice by slice, so the load of
other work on the machine weighs on both alike: quote the ratios.

A click is timed from ``Annotator.add_point`` (what a mouse click on the canvas triggers) to
the mask written into the Labels layer and the annotator idle again.

    xvfb-run -a .venv/bin/python bench/reopen_dock.py [--frames 200] [--image-size 1024] \
        [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam2.1_hiera_tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--side", type=int, default=512, help="frame height and width")
    parser.add_argument("--slices", type=int, default=3, help="slices clicked per session")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam2._qt.widget import AnnotatorWidget
    from napari_sam2._sample_data import make_demo_stack

    if args.threads:
        torch.set_num_threads(args.threads)  # one thread: steadier on a machine shared with others
    sys_path_bench()
    from _harness import random_model
    from gui_responsiveness import close_notifications, wait_idle

    model = random_model(args.preset, args.image_size)
    stack = make_demo_stack((args.frames, args.side, args.side))
    step = args.frames // (args.slices + 1)
    slices = [step * (k + 1) for k in range(args.slices)]
    folder = tempfile.mkdtemp(prefix="napari-sam2-reopen-")
    app = QApplication.instance() or QApplication([])

    def session(keep: bool):
        viewer = napari.Viewer(show=True)
        image = viewer.add_image(stack, name="volume")
        widget = AnnotatorWidget(viewer)
        viewer.window.add_dock_widget(widget)
        a = widget.annotator
        a.state.update({"precision": args.precision, "prefetch": False, "feature_folder": folder})
        a.set_model(model, args.preset)
        a.state.feature_store = keep
        for _ in range(10):
            app.processEvents()
        wait_idle(app, a)
        return viewer, image, a

    def click(viewer, image, a, frame: int, offset: int = 0) -> float:
        viewer.dims.set_current_step(0, frame)
        wait_idle(app, a)
        row, col = args.side // 2 + offset, args.side // 2
        start = time.perf_counter()
        a.add_point(image.data_to_world([frame, row, col]))
        wait_idle(app, a)
        seconds = time.perf_counter() - start
        if not (a.layers.labels.data[frame] > 0).any():
            raise RuntimeError(f"slice {frame}: no mask was written")
        close_notifications(viewer)
        return seconds

    viewer, image, a = session(keep=True)
    filling = [click(viewer, image, a, f) for f in slices]
    viewer.close()

    # Both reopened windows at once, their clicks interleaved slice by slice, so the load of
    # other work on the machine weighs on both alike; the ratios are what to quote.
    kept = session(keep=True)
    note = kept[2].state.store_note
    plain = session(keep=False)
    with_store, without, cached = [], [], []
    for f in slices:
        with_store.append(click(*kept, f))
        without.append(click(*plain, f))
        cached.append(click(*plain, f, offset=3))
    for window in (kept[0], plain[0]):
        window.close()

    def ms(values):
        return f"{1000 * statistics.median(values):.0f} ms (median of {len(values)})"

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    print(f"{args.preset} at {args.image_size}, {args.precision}, {args.frames} frames of "
          f"{args.side}x{args.side}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"fill session (compute + write):   {ms(filling)}")
    print(f"reopened, with the store:         {ms(with_store)}   [{note}]")
    print(f"reopened, without the store:      {ms(without)}")
    print(f"cached click (features in RAM):   {ms(cached)}")
    print(f"per slice, median: with / without {ratio(with_store, without):.3f}; "
          f"with / cached {ratio(with_store, cached):.2f}")  # fmt: skip
    return 0


def sys_path_bench() -> None:
    """Make the sibling bench modules importable when run as a script."""
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


if __name__ == "__main__":
    raise SystemExit(main())
