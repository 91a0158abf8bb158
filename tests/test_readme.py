"""The README and the docs against the repo: results, links, paths and commands.

The README's results table names, per row, the metrics file and key its number comes from; every number
shown must equal that file's value at the precision shown, so the README and `metrics/*.json` cannot
disagree after a `dvc repro` that moves them. docs/unknown-detection.md's table is held to
`reports/unknown.json` the same way. The other checks keep the documentation's pointers live:
relative links (and their #anchors) resolve, the code paths it names exist, `make` targets exist, and no
page names the old layout's paths. Fast: reads text and JSON only.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "research" / "README.md", REPO / "research" / "head_cv" / "README.md"]
MAX_README_LINES = 250

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SOURCE = re.compile(r"`(metrics/[\w.]+\.json)`\s+`([\w.]+)`")
COUNT = re.compile(r"\((\d+) of (\d+)\)")


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of level 2."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def table_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table in ``text``, as one dict per row keyed by the header's cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, "no Markdown table"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def lookup(data: dict, key: str) -> float:
    """``data["a"]["b"]`` for ``"a.b"``, falling back to a literal dotted key as DVC allows."""
    if key in data:
        return data[key]
    head, _, rest = key.partition(".")
    assert rest and head in data, f"no key {key!r}"
    return lookup(data[head], rest)


def check_shown(shown: str, value: float, what: str, percent: bool = False) -> None:
    """``shown`` (e.g. "0.980", "88.9") is ``value`` rounded to the decimals shown."""
    actual = Decimal(repr(value * 100 if percent else value))
    places = len(shown.partition(".")[2])
    assert Decimal(shown) == round(actual, places), f"{what}: README shows {shown}, the file has {actual}"


def results() -> list[dict[str, str]]:
    return table_rows(section(README.read_text(), "Results"))


def test_results_table_names_a_source_for_every_row() -> None:
    rows = results()
    assert len(rows) >= 8
    for row in rows:
        assert SOURCE.fullmatch(row["source"]), f"row {row['result']!r}: source must be `metrics/<file>.json` `<key>`"


@pytest.mark.parametrize("row", results(), ids=lambda row: row["result"])
def test_results_table_matches_the_metrics_files(row: dict[str, str]) -> None:
    path, key = SOURCE.fullmatch(row["source"]).groups()
    data = json.loads((REPO / path).read_text())
    value = lookup(data, key)
    cell = row["value"].replace("*", "")
    percent = "%" in cell
    numbers = NUMBER.findall(COUNT.sub("", cell))
    assert len(numbers) == 1, f"{row['result']}: one number per value cell, got {numbers}"
    check_shown(numbers[0], value, f"{path} {key}", percent)
    for count in COUNT.finditer(cell):  # "(40 of 45)": the rate's count, exactly
        k, n = int(count.group(1)), int(count.group(2))
        assert round(value * n) == k, f"{row['result']}: {k} of {n} is not {value} of {n}"
    bounds = NUMBER.findall(row["95% CI"])
    if bounds:
        assert len(bounds) == 2, f"{row['result']}: the interval must be [low, high]"
        for shown, side in zip(bounds, ("low", "high")):
            check_shown(shown, lookup(data, f"{key}_{side}"), f"{path} {key}_{side}")


UNKNOWN_DOC = REPO / "docs" / "unknown-detection.md"
RATES = {
    "report photos rejected": "ood_photos_rejected",
    "images rejected": "ood_rejected",
    "known test rejected": "known_rejected",
}


def unknown_rows() -> list[dict[str, str]]:
    text = UNKNOWN_DOC.read_text()
    return table_rows(text[text.index("| detector | AUROC |") :])


@pytest.mark.parametrize("row", unknown_rows(), ids=lambda row: row["detector"])
def test_unknown_detection_table_matches_the_report(row: dict[str, str]) -> None:
    """docs/unknown-detection.md's report-half table: each cell "k (p%)" is the detector's rate in
    reports/unknown.json as a count of the header's "(of N)" and a percentage; AUROC and FPR@95 as shown."""
    methods = json.loads((REPO / "reports" / "unknown.json").read_text())["methods"]
    name = re.search(r"`(\w+)`", row["detector"]).group(1)
    assert name in methods, f"docs/unknown-detection.md: no detector {name!r} in reports/unknown.json"
    found = methods[name]
    check_shown(row["AUROC"], found["auroc"], f"{name} auroc")
    check_shown(row["FPR@95"], found["fpr_at_95"], f"{name} fpr_at_95")
    checked = {"AUROC", "FPR@95", "detector"}
    for column, cell in row.items():
        label = re.match(r"(.*?) \(of (\d+)\)$", column)
        if not label:
            continue
        checked.add(column)
        value, n = found[RATES[label.group(1)]], int(label.group(2))
        count, percent = re.fullmatch(r"\**(\d+) \(([\d.]+)%\)\**", cell).groups()
        assert int(count) == round(value * n), f"{name} {column}: {count} is not {value} of {n}"
        check_shown(percent, value, f"{name} {column}", percent=True)
    assert checked == set(row), f"unchecked columns {sorted(set(row) - checked)}"


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_starts_with_the_two_commands() -> None:
    first = README.read_text().split("\n## ", 1)[0]
    assert "make repro" in first and "make test" in first


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    found = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    return found | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} (no such file)"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: link to {target} (no such heading in {dest.name})"


CODE_PATH = re.compile(r"(?<![\w/.])((?:src|benchmarks|research|tools|tests|docs)/[\w./-]*\w)")
OLD_PATHS = re.compile(
    r"python -m src\.|(?<![\w/])src/[a-z_]+\.py|benchmarks/(?:ood_|head_cv|compare_backbones)"
    r"|reports/ood_(?!data\.json)"
)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_named_code_paths_exist(page: Path) -> None:
    text = page.read_text()
    assert not OLD_PATHS.findall(text), f"{page.name} names paths of the old layout: {OLD_PATHS.findall(text)}"
    missing = {p for p in CODE_PATH.findall(text) if not (REPO / p).exists()}
    assert not missing, f"{page.name} names paths that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_make_targets_exist(page: Path) -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"(?:^|`)make ([a-z][\w-]*)", page.read_text(), flags=re.M))
    assert named <= targets, f"{page.name}: no Makefile target for make {sorted(named - targets)}"
