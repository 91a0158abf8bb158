"""Table of the CV results in <out>/cv (+ probability-average ensembles), paired against the probe.

    python research/head_cv/summary.py [--ens "a_head|raw+b_probe|raw" ...] [--out research/head_cv/out]

Each candidate appears in three variants, from its logits on the selection and held-out folds:
  |raw  T = 1 (the pipeline's default: train.calibrate false);
  |ts   the pipeline's temperature scaling fitted on the selection fold (abcd.evaluation.calibration, log T in [-4, 4]);
  |tsb  the same with log T bounded to [-1, 1] (diagnostic: an error-free selection fold drives T towards 0).
Columns: mean ± sd over folds of held-out macro F1 and log loss; per-fold paired differences against
--ref (wins/ties/losses on F1; folds with lower/higher log loss); median log loss; mean fit seconds.
Rows sorted by mean log loss. Writes <out>/cv_table.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abcd.evaluation.calibration import calibrated_probs, fit_temperature
from abcd.evaluation.metrics import f1_macro, log_loss
from abcd.features.store import load_split

BOUNDS = {"raw": None, "ts": (-4.0, 4.0), "tsb": (-1.0, 1.0)}


def temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] | None) -> float:
    if bounds is None:
        return 1.0
    # NLL is unimodal in log T, so its minimum on a sub-interval of the pipeline's [-4, 4] is the
    # pipeline's minimiser clipped to that interval.
    return math.exp(min(max(math.log(fit_temperature(logits, y)), bounds[0]), bounds[1]))


def variant(d: dict, y: np.ndarray, bounds) -> dict:
    """{"test_<seed>_<fold>": held-out probs, "testidx_<seed>_<fold>": indices} after temperature scaling."""
    out = {}
    for key in [k[len("testlogits_") :] for k in d if k.startswith("testlogits_")]:
        t = temperature(d[f"sellogits_{key}"], y[d[f"selidx_{key}"]], bounds)
        out[f"test_{key}"] = calibrated_probs(d[f"testlogits_{key}"], t)
        out[f"testidx_{key}"] = d[f"testidx_{key}"]
    return out


def per_fold(probs: dict, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(k[len("test_") :] for k in probs if k.startswith("test_"))
    f1, ll = [], []
    for k in keys:
        p, idx = probs[f"test_{k}"], probs[f"testidx_{k}"]
        f1.append(f1_macro(y[idx], p.argmax(1), p.shape[1]))
        ll.append(log_loss(y[idx], p))
    return np.array(f1), np.array(ll)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("research/head_cv/out"), help="cv.py's --out")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--ref", default="b_probe|raw", help="the row the paired differences are against")
    ap.add_argument("--ens", nargs="*", default=[], help='probability averages, e.g. "a_head|raw+b_probe|raw"')
    args = ap.parse_args()
    y = np.concatenate([load_split(args.features, s)["labels"] for s in ("train", "val")]).astype(np.int64)
    results, secs = {}, {}
    for path in sorted((args.out / "cv").glob("*.npz")):
        d = dict(np.load(path))
        sec = np.mean([r["seconds"] for r in json.loads(path.with_suffix(".json").read_text())])
        for name, bounds in BOUNDS.items():
            results[f"{path.stem}|{name}"] = variant(d, y, bounds)
            secs[f"{path.stem}|{name}"] = sec
    if not results:
        raise SystemExit(f"no results in {args.out / 'cv'}: run research/head_cv/cv.py first")
    for e in args.ens:
        parts = e.split("+")
        if not all(p in results for p in parts):
            print(f"skipping ensemble {e}: not all of {parts} were run", file=sys.stderr)
            continue
        d = dict(results[parts[0]])
        for k in d:
            if k.startswith("test_"):
                d[k] = np.mean([results[p][k] for p in parts], axis=0)
        results["ens:" + e] = d
    if args.ref not in results:
        raise SystemExit(f"--ref {args.ref} was not run")
    ref_f1, ref_ll = per_fold(results[args.ref], y)
    rows = []
    for name, d in results.items():
        f1, ll = per_fold(d, y)
        rows.append((ll.mean(), name, f1, ll, f1 - ref_f1, ll - ref_ll))
    lines = [
        "| candidate | CV macro F1 (mean ± sd) | CV log loss (mean ± sd) | ΔF1 vs probe (mean; folds W/T/L) "
        "| ΔLL vs probe (mean; folds better/worse) | median LL | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, name, f1, ll, df, dl in sorted(rows):
        win, tie, loss = (df > 1e-12).sum(), (np.abs(df) <= 1e-12).sum(), (df < -1e-12).sum()
        lines.append(
            f"| {name} | {f1.mean():.4f} ± {f1.std(ddof=1):.4f} | {ll.mean():.4f} ± {ll.std(ddof=1):.4f} | "
            f"{df.mean():+.4f} ({win}/{tie}/{loss}) | {dl.mean():+.4f} ({(dl < 0).sum()}/{(dl > 0).sum()}) | "
            f"{np.median(ll):.4f} | {secs.get(name, float('nan')):.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (args.out / "cv_table.md").write_text(text)


if __name__ == "__main__":
    main()
