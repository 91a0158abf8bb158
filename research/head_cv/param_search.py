"""The pipeline's head under other params.yaml settings, in the same nested CV (never reads the test split).

    python benchmarks/head_cv/param_search.py                      # the settings below, seeds 0 1 2
    python benchmarks/head_cv/param_search.py --set 'mine={"optimizer": "adam", "weight_decay": 0.001}'

Each setting overrides ``model.dropout`` and ``train.*`` values of params.yaml, on top of the
randomly started head that was the default when the search was run (``train.init: random``, lr 3e-3;
``--set 'x={"init": "probe", "lr": 1e-4}'`` gives today's default). No code change: a winner is
adopted by editing params.yaml. The probe is fitted on the same folds; the table pairs
every setting with it fold by fold. Needs benchmarks/head_cv/features.py first. Raw probabilities
(T = 1, as ``train.calibrate: false``). "full" = one batch per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.head_cv import candidates, cv

from abcd.evaluation.calibration import calibrated_probs

FULL = {"batch_size": 1024}
# The 15-fold shortlist of a wider screen (README here); params.yaml's own values where not named.
SETTINGS: dict[str, dict] = {
    "default": {},
    "adamw_bs32": {"batch_size": 32},
    "adamw_bs32_e100": {"batch_size": 32, "epochs": 100},
    "adamw_bs16_e100_balanced_d0.7": {"batch_size": 16, "epochs": 100, "class_weights": "balanced", "dropout": 0.7},
    "adamw_full_e300_lr1e-2_wd0.1": {**FULL, "epochs": 300, "lr": 1e-2, "weight_decay": 0.1},
    "adam_wd1e-3_d0.7_bs32_e100": {"optimizer": "adam", "weight_decay": 1e-3, "dropout": 0.7, "batch_size": 32}
    | {"epochs": 100},
    "adam_wd0.01_d0.5_full_e300_lr1e-2": {"optimizer": "adam", "weight_decay": 0.01, **FULL, "epochs": 300}
    | {"lr": 1e-2},
    "adam_wd0_d0.8_e200_lr1e-3": {"optimizer": "adam", "weight_decay": 0.0, "dropout": 0.8, "epochs": 200}
    | {"lr": 1e-3},
    "sgd_bs32_lr0.03_wd1e-3_e100": {"optimizer": "sgd", "batch_size": 32, "lr": 0.03, "weight_decay": 1e-3}
    | {"epochs": 100},
}


def params_for(overrides: dict):
    kw = dict(overrides)
    base = candidates.PARAMS
    model = base.model.model_copy(update={"dropout": kw.pop("dropout", base.model.dropout)})
    lr = kw.pop("lr", candidates.RANDOM_LR)  # a top-level param
    # The search was of randomly started heads (the default then): unset keys keep that default.
    return base.model_copy(update={"lr": lr, "model": model, "train": candidates.RANDOM_START.model_copy(update=kw)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="name=JSON overrides instead of the built-in list")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/head_cv/out"))
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.set)
    settings = {k: json.loads(v) for k, v in settings.items()} if settings else SETTINGS
    views, eval_view, y = cv.load_pool(Path("data/features"), args.out)
    splits = list(cv.folds(y, args.seeds))
    base = candidates.PARAMS
    results = {}
    for name, overrides in {"probe": None, **settings}.items():
        candidates.PARAMS = base if overrides is None else params_for(overrides)
        rows = []
        for _, _, trn, sel, out in splits:
            fn = candidates.probe if overrides is None else candidates.head
            fitted = fn(views[trn], eval_view[trn], y[trn], eval_view[sel], y[sel], eval_view[out])
            rows.append(candidates.scores(y[out], calibrated_probs(fitted.out_logits, 1.0)))
        results[name] = (np.array([r["f1"] for r in rows]), np.array([r["ll"] for r in rows]))
        print(f"{name}: F1 {results[name][0].mean():.4f}  log loss {results[name][1].mean():.4f}", flush=True)
    candidates.PARAMS = base
    pf, pl = results["probe"]
    lines = [
        f"{len(splits)} folds; paired against the probe fold by fold",
        "| setting | CV F1 | CV log loss | ΔF1 vs probe (W/T/L) | Δlog loss vs probe (better/worse) |",
        "|---|---|---|---|---|",
    ]
    for name, (f, ll) in sorted(results.items(), key=lambda kv: kv[1][1].mean()):
        df, dl = f - pf, ll - pl
        wtl = f"{(df > 1e-9).sum()}/{(abs(df) <= 1e-9).sum()}/{(df < -1e-9).sum()}"
        lines.append(
            f"| {name} | {f.mean():.4f} ± {f.std(ddof=1):.4f} | {ll.mean():.4f} ± {ll.std(ddof=1):.4f} | "
            f"{df.mean():+.4f} ({wtl}) | {dl.mean():+.4f} ({(dl < 0).sum()}/{(dl > 0).sum()}) |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "param_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
