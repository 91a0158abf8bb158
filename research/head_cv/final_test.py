"""ONE-TIME evaluation on the test split, after the choice was made from cv.py / summary.py.

    python benchmarks/head_cv/final_test.py --cands a_head b_probe [--out benchmarks/head_cv/out]

The only script here that reads data/features/test/. As the pipeline does: train on the train
images (augmented views, data/features/train/ [+ <out>/train_extra_views.npz], and eval view,
its eval_features), select on val (best epoch / C; temperature), score test. Reports test macro F1 /
log loss raw (T = 1, the pipeline's default) and with the pipeline's temperature scaling fitted on val.
Writes <out>/final_test.json (merged with earlier runs) and <out>/final_test/<cand>.npz (val/test logits).
Do not use these numbers to choose between candidates: that is what the CV is for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abcd.evaluation.calibration import calibrated_probs, fit_temperature
from abcd.features.store import load_split
from research.head_cv import candidates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cands", nargs="+", required=True)
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/head_cv/out"))
    args = ap.parse_args()
    tr, va, te = (load_split(args.features, s) for s in ("train", "val", "test"))
    if "eval_features" not in tr:
        raise SystemExit(f"{args.features}/train/ has no eval_features (an older featurize): run dvc repro")
    views = tr["features"]
    if (args.out / "train_extra_views.npz").exists():
        views = np.concatenate([views, np.load(args.out / "train_extra_views.npz")["features"]], axis=1)
    views, eval_view = views.astype(np.float32), tr["eval_features"].astype(np.float32)
    ytr = tr["labels"].astype(np.int64)
    xv, yv = va["features"].astype(np.float32), va["labels"].astype(np.int64)
    xt, yt = te["features"].astype(np.float32), te["labels"].astype(np.int64)
    path = args.out / "final_test.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    (args.out / "final_test").mkdir(parents=True, exist_ok=True)
    for name in args.cands:
        fit = candidates.run(name, views, eval_view, ytr, xv, yv, xt)
        t = fit_temperature(fit.sel_logits, yv)
        results[name] = {
            "test_raw": candidates.scores(yt, calibrated_probs(fit.out_logits, 1.0)),
            "test_ts": candidates.scores(yt, calibrated_probs(fit.out_logits, t)),
            "val_raw": candidates.scores(yv, calibrated_probs(fit.sel_logits, 1.0)),
            "T_val": t,
            **fit.info,
        }
        np.savez(args.out / "final_test" / f"{name}.npz", test_logits=fit.out_logits, val_logits=fit.sel_logits)
        print(name, json.dumps(results[name]), flush=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
