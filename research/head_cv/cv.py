"""Nested cross-validation of classifier heads on the pool train + val (never reads the test split).

    python benchmarks/head_cv/cv.py --cands a_head b_probe ... [--seeds 0 1 2] [--out benchmarks/head_cv/out]

Pool = train + val images. Stratified 5 folds (sklearn StratifiedKFold, shuffled, random_state = repeat
seed), one repeat per --seeds entry. For fold f: held-out = fold f; selection = fold (f + 1) % 5, used as
the pipeline uses val (best epoch / C; the temperature); training = the other 3 folds.
Training inputs of a pool image: its augmented views (train: data/features/train/ views 0..1
[+ <out>/train_extra_views.npz]; val: <out>/val_views.npz) and its eval view (train: data/features/train/
eval_features; val: data/features/val/). Selection and held-out images are scored on their eval view.
Needs benchmarks/head_cv/features.py first. Per candidate writes <out>/cv/<cand>.json (per fold: raw
macro F1 / log loss on the held-out fold, the same after the pipeline's temperature scaling fitted on
the selection fold, T, best epoch or C, fit seconds) and <out>/cv/<cand>.npz (selection and held-out
logits and indices per fold, for summary.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abcd.evaluation.calibration import calibrated_probs, fit_temperature
from abcd.features.store import load_split
from research.head_cv import candidates


def _paths(npz) -> list[str]:
    return [str(p) for p in npz["paths"]]


def load_pool(features: Path, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(views (N, V, D), eval view (N, D), labels (N,)) of train + val, in that order."""
    if not (out / "val_views.npz").exists():
        raise SystemExit(f"{out}: no val_views.npz: run benchmarks/head_cv/features.py --out {out}")
    tr, va = load_split(features, "train"), load_split(features, "val")
    vav = np.load(out / "val_views.npz")
    if "eval_features" not in tr:
        raise SystemExit(f"{features}/train/ has no eval_features (an older featurize): run dvc repro")
    trv = tr["features"]
    if (out / "train_extra_views.npz").exists():
        extra = np.load(out / "train_extra_views.npz")
        assert _paths(extra) == _paths(tr)
        trv = np.concatenate([trv, extra["features"]], axis=1)
    if _paths(vav) != _paths(va):
        raise SystemExit(f"{out} was made from other splits than {features}: rerun features.py")
    k = min(trv.shape[1], vav["features"].shape[1])
    views = np.concatenate([trv[:, :k], vav["features"][:, :k]]).astype(np.float32)
    eval_view = np.concatenate([tr["eval_features"], va["features"]]).astype(np.float32)
    y = np.concatenate([tr["labels"], va["labels"]]).astype(np.int64)
    return views, eval_view, y


def folds(y: np.ndarray, seeds: list[int]):
    """(seed, fold, training, selection, held-out) index arrays."""
    for s in seeds:
        idx = [te for _, te in StratifiedKFold(5, shuffle=True, random_state=s).split(np.zeros(len(y)), y)]
        for f in range(5):
            sel = idx[(f + 1) % 5]
            trn = np.concatenate([idx[g] for g in range(5) if g not in (f, (f + 1) % 5)])
            yield s, f, np.sort(trn), sel, idx[f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cands", nargs="+", default=list(candidates.CANDIDATES), help="default: all")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one 5-fold repeat per seed")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/head_cv/out"))
    args = ap.parse_args()
    views, eval_view, y = load_pool(args.features, args.out)
    print(f"pool: views {views.shape}, eval view {eval_view.shape}, per class {np.bincount(y).tolist()}", flush=True)
    (args.out / "cv").mkdir(parents=True, exist_ok=True)
    for name in args.cands:
        rows, arrays = [], {}
        for s, f, trn, sel, te in folds(y, args.seeds):
            fit = candidates.run(name, views[trn], eval_view[trn], y[trn], eval_view[sel], y[sel], eval_view[te])
            t = fit_temperature(fit.sel_logits, y[sel])
            raw, ts = (candidates.scores(y[te], calibrated_probs(fit.out_logits, v)) for v in (1.0, t))
            sel_raw = candidates.scores(y[sel], calibrated_probs(fit.sel_logits, 1.0))
            ts_row = {"f1_ts": ts["f1"], "ll_ts": ts["ll"], "T": t}
            rows.append({"seed": s, "fold": f, **raw, **ts_row, "sel": sel_raw, **fit.info})
            key = f"{s}_{f}"
            arrays[f"testlogits_{key}"], arrays[f"sellogits_{key}"] = fit.out_logits, fit.sel_logits
            arrays[f"testidx_{key}"], arrays[f"selidx_{key}"] = te, sel
        (args.out / "cv" / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        np.savez(args.out / "cv" / f"{name}.npz", **arrays)
        f1, ll, ll_ts = (np.array([r[k] for r in rows]) for k in ("f1", "ll", "ll_ts"))
        sec = np.mean([r["seconds"] for r in rows])
        print(
            f"{name:12s} F1 {f1.mean():.4f}±{f1.std(ddof=1):.4f}  LL raw {ll.mean():.4f}±{ll.std(ddof=1):.4f}"
            f"  LL ts {ll_ts.mean():.4f}  {sec:.1f}s/fit",
            flush=True,
        )


if __name__ == "__main__":
    main()
