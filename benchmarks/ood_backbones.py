"""Unknown detection from the other offline backbones' features (issue 20), on the selection half.

Are the four near-OOD photos the default ``fusion`` lets through (anemones, marigold, dragonfly,
scarce_swallowtail) a limit of lite2's representation, or of frozen ImageNet features in general?
Every backbone this environment has offline weights for (efficientnet_lite0/1/2) is run through
the pipeline's own featurize stage (``python -m abcd.stages.featurize`` with params.yaml's
``model.backbone`` swapped: same views, eval transform and precision; cached under ``--cache``),
and scored with the feature-only detectors, alone and summed (val z-scores, as ``fusion``):

- ``knn`` (k = 1, cosine; bank: the augmented views plus each training image's eval view) and
  ``mahalanobis_pp`` (Mahalanobis on L2-normalised features), fitted on each backbone's training
  features exactly as the pipeline fits them (the registered methods);
- lite2's four-score default fusion with the other backbones' scores added.

Energy and ViM need a head per backbone and are lite2's only. Tables, threshold (val, split
conformal at ``unknown.false_reject``) and selection rule as in benchmarks/ood_candidates.py; only
the selection half is scored (its ``load_data``). No OOD photo fits anything.

Result (reports/ood_backbones.md): lite0 and lite1 each accept more photos than lite2 (knn 37/46
against 40/46), and no sum across backbones beats the default fusion's 42/46 at 3/184; the same
flowers and insects pass every row. Run after ``dvc repro`` (about 50 s to featurize both):

    python benchmarks/ood_backbones.py > reports/ood_backbones.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abcd.data.ood_manifest import read_ood_manifest
from abcd.features.store import load_split
from benchmarks.ood_candidates import Data, Row, Scores, evaluate, fuse, load_data, registered

OTHERS = ("efficientnet_lite0", "efficientnet_lite1")


def other_features(name: str, cache: Path, ood: Path) -> Path:
    """Run the featurize stage with ``model.backbone: name`` into ``cache/name`` (once)."""
    out = cache / name
    if not (out / "meta.json").is_file():
        params = yaml.safe_load(Path("params.yaml").read_text())
        params["model"]["backbone"] = name
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"params_{name}.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        cmd = [sys.executable, "-m", "abcd.stages.featurize", "--params", str(path), "--data", "data/prepared"]
        subprocess.run([*cmd, "--ood", str(ood), "--out", str(out)], check=True, stdout=sys.stderr)
    return out


def with_features(data: Data, features: Path, ood: Path) -> Data:
    """``data`` with another backbone's features (selection half only); the lite2 head's logits stay."""
    train = load_split(features, "train")
    views, eval_view, y = np.asarray(train["features"]), np.asarray(train["eval_features"]), train["labels"]
    views_x, views_y = views.reshape(-1, views.shape[-1]), np.repeat(y, views.shape[1])
    half = np.array([h == "selection" for h in read_ood_manifest(ood / "manifest.csv").halves])
    feats = {s: np.asarray(load_split(features, s)["features"]) for s in ("val", "test")}
    feats["ood"] = np.asarray(load_split(features, "ood")["features"][half])
    bank = (np.concatenate([views_x, eval_view]), np.r_[views_y, y])
    return Data(data.params, *bank, views_x, views_y, feats, data.logits, data.ood_full, data.ood_photo, data.linear)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--ood", type=Path, default=Path("data/ood"))
    ap.add_argument("--cache", type=Path, default=Path("runs/ood_backbones"))
    args = ap.parse_args()
    lite2 = load_data(args.features, args.model, args.ood)
    rows: list[Row] = []

    def add(label: str, bank: str, scores: Scores) -> Scores:
        rows.append(evaluate(lite2, label, bank, scores))
        return scores

    knn, maha = {}, {}
    for name, data in [("efficientnet_lite2", lite2)] + [
        (o, with_features(lite2, other_features(o, args.cache, args.ood), args.ood)) for o in OTHERS
    ]:
        short = name.removeprefix("efficientnet_")
        knn[short] = add(f"{short} knn k=1", "views+eval", registered(data, "knn", "views+eval", k=1))
        maha[short] = add(f"{short} mahalanobis_pp", "views", registered(data, "mahalanobis_pp", "views"))
    energy = add("lite2 energy", "-", registered(lite2, "energy", "views"))
    vim = add("lite2 vim dim=256", "views", registered(lite2, "vim", "views"))
    four = [knn["lite2"], energy, maha["lite2"], vim]
    add("lite2 fusion (default): knn + energy + mahalanobis_pp + vim", "-", fuse(four, "z", "sum"))
    sets = {"lite0 + lite2": ("lite0", "lite2"), "lite1 + lite2": ("lite1", "lite2")}
    sets["lite0 + lite1 + lite2"] = ("lite0", "lite1", "lite2")
    for label, names in sets.items():
        add(f"knn, {label}", "views+eval", fuse([knn[n] for n in names], "z", "sum"))
        add(f"mahalanobis_pp, {label}", "views", fuse([maha[n] for n in names], "z", "sum"))
        both = [knn[n] for n in names] + [maha[n] for n in names]
        add(f"knn + mahalanobis_pp, {label}", "-", fuse(both, "z", "sum"))
    add("lite2 fusion + lite0, lite1 knn", "-", fuse([*four, knn["lite0"], knn["lite1"]], "z", "sum"))
    add("lite2 fusion + lite0, lite1 mahalanobis_pp", "-", fuse([*four, maha["lite0"], maha["lite1"]], "z", "sum"))
    others = [knn["lite0"], knn["lite1"], maha["lite0"], maha["lite1"]]
    add("lite2 fusion + lite0, lite1 knn + mahalanobis_pp", "-", fuse([*four, *others], "z", "sum"))

    n, n_known = rows[0].n_photos, rows[0].n_known
    print("# Unknown detection from each offline backbone's features (issue 20)\n")
    print(
        "`python benchmarks/ood_backbones.py` (after `dvc repro`), default params. Rows, columns and the selection "
        "rule as in `reports/ood_candidates.md`. The report half is not read.\n"
    )
    images = len(lite2.feats["ood"])
    print(f"Selection half: {n} distinct OOD photos ({images} images with crops), {n_known} known test images.\n")
    print("| detector | bank | AUROC | FPR@95 | photos rejected | known rejected | accepted photos |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.label} | {r.bank} | {r.auroc:.3f} | {r.fpr95:.3f} | {n - len(r.missed)}/{n} "
            f"| {round(r.known * n_known)}/{n_known} | {', '.join(r.missed)} |"
        )
    limit = int(np.floor(lite2.params.unknown.false_reject * n_known))
    ok = [r for r in rows if round(r.known * n_known) <= limit]
    best = max(ok, key=lambda r: (-len(r.missed), -r.fpr95))
    rule = f"most photos with at most {limit}/{n_known} known rejected; ties by FPR@95, then the earlier, simpler row"
    print(f"\nThe rule's choice ({rule}): {best.label}, {n - len(best.missed)}/{n} photos.")


if __name__ == "__main__":
    main()
