"""Choose the unknown detector on the OOD set's selection half: one table of every candidate.

For each detector and setting (kNN's k, SCALE's percentile, ViM's subspace, which training
views form the bank): AUROC of known test images against the selection half's distinct OOD
photos, FPR at 95% known kept (the fraction of those photos accepted at the threshold that
keeps 95% of known test images), and, at the val-calibrated threshold for
``unknown.false_reject`` (split conformal, as train sets it), the fraction of selection photos
(and of all their images, crops included) rejected and of known test images rejected.
The report half is never read here (``--half report`` exists for the closing note only).

The rule that picks the default, fixed before the table is read (and unchanged since the first
batch of photos): the most selection photos rejected among detectors with at most
``unknown.false_reject`` (2%) of known test images rejected; ties broken by the lower FPR@95,
then by the simpler detector (one score before a combination, the augmented-view bank before
views+eval). AUROC differences of a few thousandths on ~46 photos are noise and break no tie.
The last row (selection half only) is the pipeline's ``fusion``, fitted and scored as train and
test do: the detector this rule picked among benchmarks/ood_candidates.py's candidates.

Needs `dvc repro` first (features and models/model.pt):
    python benchmarks/ood_detectors.py > reports/ood_selection.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.core.params import load_params
from abcd.core.registry import UNKNOWN_METHODS
from abcd.data.ood_manifest import read_ood_manifest
from abcd.evaluation.metrics import roc_auc
from abcd.features.store import load_split
from abcd.models.checkpoint import load_checkpoint
from abcd.ood.detectors import detector_from_extra, fit_inference_extras, head_logits, threshold_for_false_reject


def selection_numbers(scores: dict[str, np.ndarray], ood_full: np.ndarray, alpha: float) -> dict[str, float]:
    """One table row's numbers from val, test (known) and OOD scores (higher = more unknown).

    AUROC of known test images against the distinct OOD photos; FPR@95 (the photos accepted at the
    threshold that keeps 95% of known test images); at the val-calibrated split-conformal threshold
    for ``alpha``: the fractions of photos, of OOD images (crops included) and of known images rejected.
    """
    thr = threshold_for_false_reject(scores["val"], alpha)
    known, photos = scores["test"], scores["ood"][ood_full]
    return {
        "threshold": thr,
        "auroc": roc_auc(np.r_[np.zeros(len(known)), np.ones(len(photos))], np.r_[known, photos]),
        "fpr95": float(np.mean(photos <= np.quantile(known, 0.95))),
        "photos": float(np.mean(photos > thr)),
        "images": float(np.mean(scores["ood"] > thr)),
        "known": float(np.mean(known > thr)),
    }


def candidates(knn_ks: list[int]) -> list[tuple[str, str, dict]]:
    """(label, registered method, extra fit keywords)."""
    out = [("max_softmax", "max_softmax", {}), ("energy", "energy", {}), ("mahalanobis", "mahalanobis", {})]
    out += [(f"knn k={k}", "knn", {"k": k}) for k in knn_ks]
    out += [("mahalanobis_pp", "mahalanobis_pp", {})]
    out += [(f"vim dim={d}", "vim", {"dim": d}) for d in (32, 64, 128, 256, 512)]
    out += [(f"scale p={p}", "scale", {"percentile": p}) for p in (65, 75, 85, 90, 95)]
    out += [(f"knn_mahalanobis_pp k={k}", "knn_mahalanobis_pp", {"k": k}) for k in knn_ks]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--half", choices=["selection", "report"], default="selection")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--ood", type=Path, default=Path("data/ood"))
    ap.add_argument("--knn-k", type=int, nargs="+", default=[1, 5, 10, 20, 50])
    args = ap.parse_args()
    params = load_params(Path("params.yaml"))
    alpha = params.unknown.false_reject
    head = load_checkpoint(args.model, expected_classes=params.classes, lazy=True).head
    linear = (head[-1].weight.detach(), head[-1].bias.detach())

    train = load_split(args.features, "train")
    views, eval_view, train_y = train["features"], train["eval_features"], train["labels"]
    val = load_split(args.features, "val")
    test = load_split(args.features, "test")
    ood = load_split(args.features, "ood")
    manifest = read_ood_manifest(args.ood / "manifest.csv")
    half = np.array([h == args.half for h in manifest.halves])
    full = np.array([r == "full" for r in manifest.regions])
    ood_x = ood["features"][half]
    ood_full = full[half]
    n_views = views.shape[1]
    banks = {
        "views": (views.reshape(-1, views.shape[-1]), np.repeat(train_y, n_views)),
        "views+eval": (
            np.concatenate([views.reshape(-1, views.shape[-1]), eval_view]),
            np.r_[np.repeat(train_y, n_views), train_y],
        ),
    }
    logits = {s: head_logits(head, x) for s, x in (("val", val["features"]), ("test", test["features"]))}
    logits["ood"] = head_logits(head, ood_x)

    print(
        f"Selection table: {args.half} half, {int(ood_full.sum())} distinct OOD photos ({len(ood_x)} images "
        f"with crops), {len(test['labels'])} known test images; threshold: val, false_reject {alpha}.\n"
    )
    feats = {"val": val["features"], "test": test["features"], "ood": ood_x}

    def row(label: str, bank_name: str, score: dict[str, np.ndarray]) -> None:
        n = selection_numbers(score, ood_full, alpha)
        print(
            f"| {label} | {bank_name} | {n['auroc']:.3f} | {n['fpr95']:.3f} | {n['photos']:.3f} "
            f"| {n['images']:.3f} | {n['known']:.3f} |",
            flush=True,
        )

    print("| detector | bank | AUROC | FPR@95 | OOD photos rejected | OOD images rejected | known rejected |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, name, kw in candidates(args.knn_k):
        method = UNKNOWN_METHODS.get(name, "method")
        for bank_name, (bx, by) in banks.items():
            if name in ("max_softmax", "energy") and bank_name != "views":
                continue  # no training bank
            k = kw.get("k", params.unknown.knn_k)
            extra = {key: v for key, v in kw.items() if key != "k"}
            if method.uses_head:
                extra["linear"] = linear
            state = method.fit(bx, by, k, **extra)
            score = {s: method.score(state, x, logits[s], 1.0) for s, x in feats.items()}
            row(label, bank_name, score)
    if args.half == "selection":
        # The fusion as train fits it (fit_inference_extras: its components with today's params, then
        # their val z-scores) and test scores it (detector_from_extra): the pipeline's own numbers.
        # Chosen on this half (benchmarks/ood_candidates.py); not re-judged on the report half here.
        extra = fit_inference_extras(
            head,
            views,
            train_y,
            val["features"],
            val["labels"],
            train_eval_x=eval_view,
            false_reject=alpha,
            knn_k=params.unknown.knn_k,
            ece_bins=params.evaluate.ece_bins,
            calibrate=False,  # no fusion component reads the temperature
        )
        fusion = detector_from_extra(extra, "fusion", None)
        score = {s: fusion.score(x, logits[s]) for s, x in feats.items()}
        assert threshold_for_false_reject(score["val"], alpha) == fusion.threshold
        parts = " + ".join(extra["unknown"]["fusion"]["state"])
        row(f"fusion sum(z): {parts} (k={params.unknown.knn_k})", "views+eval (knn), views", score)


if __name__ == "__main__":
    main()
