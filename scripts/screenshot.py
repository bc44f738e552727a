"""Regenerate docs/images/annotator.png: napari with the demo stack, the annotator and one click.

Run it under a display; on a headless machine use Xvfb::

    xvfb-run -a .venv/bin/python scripts/screenshot.py [--checkpoint PATH] [--out PATH]

With ``--checkpoint`` (an official SAM 2.1 tiny file) the mask is a real prediction; without one
the network has random weights (its object score biased so the mask shows), which is enough to
show the widget but not a meaningful mask.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="SAM 2.1 tiny checkpoint file (else random weights)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "annotator.png"))
    parser.add_argument("--slice", type=int, default=8, help="slice to click on")
    args = parser.parse_args(argv)

    import warnings

    # A deprecation notice about PyQt5 would otherwise sit on top of the canvas.
    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam2._qt.demo import open_demo
    from napari_sam2.model import build_sam2

    viewer = napari.Viewer(title="napari-sam2 demo", show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer, widget = open_demo(viewer)
    annotator = widget.annotator
    if args.checkpoint:
        model = build_sam2("sam2.1_hiera_tiny", checkpoint=args.checkpoint)
        name = "sam2.1_hiera_tiny"
    else:
        torch.manual_seed(0)
        model = build_sam2("sam2.1_hiera_tiny", image_size=256)
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(5.0)
        name = "sam2.1_hiera_tiny (random weights)"
    annotator.set_model(model, name)

    image = annotator.state.image
    viewer.dims.set_current_step(0, args.slice)
    # Click on the brightest pixel of the slice: the middle of a cell.
    frame = image.data[args.slice]
    row, col = divmod(int(frame.argmax()), frame.shape[1])
    annotator.add_point(image.data_to_world([args.slice, row, col]))
    app = QApplication.instance()
    while annotator.state.busy:
        app.processEvents()
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
    # Toasts (e.g. napari's PyQt5 deprecation notice) would cover the canvas.
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for _ in range(20):
        app.processEvents()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
