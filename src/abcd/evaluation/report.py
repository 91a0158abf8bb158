"""A Markdown summary of a workspace's run (reports/report.md), for a pull-request comment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from abcd.core.errors import MissingFileError
from abcd.core.params import Params

PLOTS = [
    ("Confusion matrix", "test/confusion.png"),
    ("Confusion matrix, normalised", "test/confusion_normalized.png"),
    ("ROC curves", "test/roc.png"),
    ("Precision-recall curves", "test/pr.png"),
    ("Calibration", "test/calibration.png"),
    ("Training curves", "train_history.png"),
    ("Most confident mistakes", "test/worst_mistakes.png"),
    ("Risk-coverage, test + OOD", "unknown/risk_coverage.png"),
]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _mode(trainable_blocks: int) -> str:
    return "frozen" if trainable_blocks == 0 else f"last {trainable_blocks} blocks fine-tuned"


def _start(train: dict) -> str:
    if train.get("init") == "probe":
        return f"the linear probe (C {train['probe_c']:g}, val loss {train['probe_val_loss']:.4f})"
    return "a random initialisation"


def render(
    data: dict,
    train: dict,
    test: dict,
    params: Params,
    plot_links: Sequence[tuple[str, str]],
    unknown: dict,
    ood_data: dict | None = None,
) -> str:
    """The report as Markdown text; pure, so tests can check it without files. ``unknown`` and ``ood_data``
    are the OOD branch's reports (ood_evaluate's, ood_data's), or say that it was not evaluated."""
    lines = [
        "# Ants, bees, cats and dogs: evaluation report",
        "",
        f"Backbone `{params.model.backbone}` ({_mode(params.train.trainable_blocks)}), head started from "
        f"{_start(train)} and trained with `{params.train.optimizer}`, lr {params.lr:g}, "
        f"{params.train.epochs} epochs, {params.featurize.views} augmented views per image; "
        f"best epoch {train['best_epoch']}{' (the start)' if train['best_epoch'] == 0 else ''}.",
        "",
        *_test_section(test["test"]),
        *_val_and_data_sections(train["val"], data["totals"]),
        *_unknown_section(unknown, params.unknown.method, ood_data or {}),
        "",
        "## Plots",
        "",
    ]
    for title, link in plot_links:
        lines += [f"### {title}", "", f"![{title}]({link})", ""]
    return "\n".join(lines)


def _test_section(t: dict) -> list[str]:
    ci_key = next(k for k in t if k.startswith("ci"))
    ci = t[ci_key]
    level = ci_key[2:]
    lines = [
        f"## Test split (n = {t['n']})",
        "",
        f"| metric | value | {level}% CI (bootstrap) |",
        "|---|---|---|",
        f"| macro F1 | {_fmt(t['f1_macro'])} | [{_fmt(ci['f1_macro']['low'])}, {_fmt(ci['f1_macro']['high'])}] |",
        f"| log loss | {_fmt(t['log_loss'])} | [{_fmt(ci['log_loss']['low'])}, {_fmt(ci['log_loss']['high'])}] |",
        f"| accuracy | {_fmt(t['accuracy'])} | |",
        f"| balanced accuracy | {_fmt(t['balanced_accuracy'])} | |",
        f"| micro F1 | {_fmt(t['f1_micro'])} | |",
        f"| macro ROC-AUC (one vs rest) | {_fmt(t['roc_auc_macro'])} | |",
        f"| Brier score | {_fmt(t['brier'])} | |",
        f"| expected calibration error | {_fmt(t['ece'])} | |",
        "",
        "| class | precision | recall | F1 | support | ROC-AUC | average precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in t["per_class"].items():
        lines.append(
            f"| {name} | {_fmt(c['precision'])} | {_fmt(c['recall'])} | {_fmt(c['f1'])} | {c['support']} "
            f"| {_fmt(c['roc_auc'])} | {_fmt(c['average_precision'])} |"
        )
    return lines


def _val_and_data_sections(v: dict, d: dict) -> list[str]:
    return [
        "",
        "## Validation (best epoch)",
        "",
        f"loss {_fmt(v['loss'])}, accuracy {_fmt(v['accuracy'])}, macro F1 {_fmt(v['f1_macro'])}",
        "",
        "## Data",
        "",
        f"{d['kept']} images kept, {d['skipped']} skipped; "
        f"split train {d['train']} / val {d['val']} / test {d['test']}.",
    ]


def _unknown_section(unknown: dict, method: str, ood_data: dict) -> list[str]:
    if unknown.get("evaluated") is False:
        return ["", "## Unknown detection", "", f"Not evaluated: {unknown['reason']}."]
    route = f" The OOD set's Debian photos came through route `{ood_data['route']}`." if "route" in ood_data else ""
    lines = [
        "",
        "## Unknown detection",
        "",
        f"{unknown['n_known_test']} known test images against {unknown['n_ood_images']} out-of-distribution images "
        f"({unknown['n_ood_photos']} distinct photos, the OOD set's report half); thresholds fitted on val for "
        f"{unknown['target_false_reject']:.0%} false rejects, except the original rule (`predict.threshold`). "
        f"Temperature {unknown['temperature']:.3f}: test ECE {_fmt(unknown['ece_test_before'])} before, "
        f"{_fmt(unknown['ece_test_after'])} after. `unknown.method` (`{method}`) is what predict uses.{route}",
        "",
        "| method | AUROC | OOD rejected | OOD photos rejected | known test rejected | threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in unknown["methods"].items():
        shown = f"**{name}** (predict)" if name == method else name
        lines.append(
            f"| {shown} | {_fmt(m['auroc'])} | {m['ood_rejected']:.1%} | {m['ood_photos_rejected']:.1%} "
            f"| {m['known_rejected']:.1%} | {m['threshold']:.4g} |"
        )
    chosen = unknown["methods"].get(method, {})
    if "photos_by_category" in chosen:  # which kinds of photo get through, not only how many
        counts = ", ".join(f"{c} {v['rejected']}/{v['photos']}" for c, v in chosen["photos_by_category"].items())
        accepted = ", ".join(chosen["accepted_photos"]) or "none"
        lines += ["", f"`{method}` rejects, by photo category: {counts}. The photos it accepts: {accepted}."]
    return lines


def _read(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(f"report: {path} not found (run: dvc repro)")
    return json.loads(path.read_text())
