"""docs/serve_page.png: the page in headless Chromium after uploading a few test photos and a non-image.

    python tools/serve_screenshot.py [--out docs/serve_page.png]

Serves models/model.onnx (run `dvc repro` first) with src/abcd/serving/app.py's app on a free local port,
uploads one test photo per class, an OOD photo and README.md, and saves the window.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abcd.core.params import load_params  # noqa: E402
from abcd.serving.app import create_app  # noqa: E402
from abcd.serving.onnx_model import OnnxClassifier  # noqa: E402
from tests.browser_utils import headless_chromium, live_server, upload_and_wait  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs/serve_page.png")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    with (REPO / "data/prepared/test.csv").open() as f:
        rows = list(csv.DictReader(f))
    photos = [next(REPO / r["path"] for r in rows if r["label"] == c) for c in params.classes]
    with (REPO / "data/ood/manifest.csv").open() as f:
        photos.append(REPO / next(r["path"] for r in csv.DictReader(f) if r["photo"] == "coffee"))
    photos.append(REPO / "README.md")
    app = create_app(OnnxClassifier(REPO / "models/model.onnx"), params.serve, max_pixels=params.prepare.max_pixels)
    with live_server(app) as url, headless_chromium(1200, 1080) as driver:
        upload_and_wait(driver, url, [str(p) for p in photos])
        driver.save_screenshot(str(args.out))
    print(f"{args.out}: {', '.join(p.name for p in photos)}")


if __name__ == "__main__":
    main()
