"""Growth benchmark: the pipeline's cost per stage on synthetic photo sets of growing size.

    python benchmarks/growth.py [--sizes 1000 5000 20000] [--work /tmp/abcd-growth] [--planted-frac 0.01]

For each size N: builds N unique pictures from the mirror's photos plus N*planted-frac
exact and as many near duplicates (benchmarks/synth_photos.py), copies this repo (its
files, a fresh git repo and DVC cache) with prepare reading that set, and runs every stage
with ``dvc repro -s`` under /usr/bin/time: wall time, time per image and peak RSS (of the
process tree: DVC and the stage). Then ``dvc status``, a no-op ``dvc repro``, a
``dvc checkout`` of data/prepared after deleting it, and the DVC cache size; and checks
that prepare reported exactly the planted duplicates. Prints a table, a linear fit per
stage (seconds = a + b*N) and its 1M-photo projection; writes <work>/growth.json.
A benchmark, not a test: a run at 20k takes most of an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from synth_photos import build_set  # noqa: E402

from tests.pipeline_utils import copy_repo  # noqa: E402

MIRROR = (REPO / "../shared/datasets/ants-bees-cats-dogs").resolve()
# In an order `dvc repro -s` can run them one by one: the classifier's branch, then the OOD branch, then report.
STAGES = [
    *("prepare", "featurize", "train", "export", "test", "evaluate"),
    *("ood_data", "ood_featurize", "ood_test", "ood_evaluate", "report"),
]
PROJECT_TO = 1_000_000


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the process tree) of one command, which must succeed."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    wall, kib = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kib) / 1024


def make_project(dest: Path, photos: Path) -> None:
    """This repo's files (no outputs) in a fresh git repo, prepare reading ``photos``."""
    if dest.exists():
        shutil.rmtree(dest)
    copy_repo(dest)
    (dest / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    entry = {"name": "synthetic", "location": str(photos), "sha256": None, "take": "all"}
    entry["folders"] = {c: [c] for c in params["classes"]}
    sources = {"sets": {"synthetic": [entry]}, "downloads": "data/downloads"}
    (dest / "data" / "sources.yaml").write_text(yaml.safe_dump(sources, sort_keys=False))
    params["prepare"]["use"] = "synthetic"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "growth benchmark"], cwd=dest, check=True)


def after_repro(project: Path, info: dict) -> dict:
    """dvc status, no-op repro and checkout times, cache size, and the planted duplicates prepare found."""
    row: dict = {}
    row["dvc_status_s"] = timed(["dvc", "status"], project)[0]
    row["noop_repro_s"] = timed(["dvc", "repro"], project)[0]
    shutil.rmtree(project / "data/prepared")
    row["checkout_prepared_s"] = timed(["dvc", "checkout", "data/prepared"], project)[0]
    row["cache_mib"] = sum(f.stat().st_size for f in (project / ".dvc/cache").rglob("*") if f.is_file()) / 2**20
    row["prepared_files"] = sum(1 for f in (project / "data/prepared").rglob("*") if f.is_file())
    report = json.loads((project / "reports/data.json").read_text())
    found = {
        kind: {s["file"] for s in report["skipped"] if s.get("kind") == kind}
        for kind in ("exact_duplicate", "near_duplicate")
    }
    row["duplicates"] = {
        "planted_exact": len(info["exact"]),
        "planted_near": len(info["near"]),
        "found_exact": _matches(found["exact_duplicate"], info["exact"]),
        "found_near": _matches(found["near_duplicate"], info["near"]),
        "other_skipped": len(report["skipped"]) - len(info["exact"]) - len(info["near"]),
        "kept": report["totals"]["kept"],
    }
    return row


def run_size(n: int, work: Path, planted: int) -> dict:
    photos, project = work / f"photos-{n}", work / f"repo-{n}"
    t0 = time.perf_counter()
    info = build_set(MIRROR, photos, ["ants", "bees", "cats", "dogs"], n, planted)
    print(
        f"[{n}] synthetic set in {time.perf_counter() - t0:.0f} s ({info['candidates_rejected']} candidates rejected)"
    )
    make_project(project, photos)
    row: dict = {"n": n, "stages": {}}
    for stage in STAGES:
        wall, rss = timed(["dvc", "repro", "-s", stage], project)
        row["stages"][stage] = {"seconds": wall, "peak_rss_mib": rss}
        print(f"[{n}] {stage}: {wall:.1f} s, {rss:.0f} MiB", flush=True)
    row.update(after_repro(project, info))
    print(f"[{n}] {row['duplicates']}")
    return row


def restage(work: Path, sizes: list[int], first: str) -> None:
    """Re-time ``first`` and the stages after it in the built projects, with this repo's current src/."""
    out = work / "growth.json"
    rows = json.loads(out.read_text())
    for row in (r for r in rows if r["n"] in sizes):
        project = work / f"repo-{row['n']}"
        shutil.rmtree(project / "src")
        shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
        for stage in STAGES[STAGES.index(first) :]:
            wall, rss = timed(["dvc", "repro", "-f", "-s", stage], project)
            row["stages"][stage] = {"seconds": wall, "peak_rss_mib": rss}
            print(f"[{row['n']}] {stage} (re-timed): {wall:.1f} s, {rss:.0f} MiB", flush=True)
        info = json.loads((work / f"photos-{row['n']}" / "planted.json").read_text())
        row.update(after_repro(project, info))
        out.write_text(json.dumps(rows, indent=1) + "\n")
    print_table(rows, project_fit(rows))


def _matches(reported: set[str], planted: list[dict]) -> int:
    """Planted copies that prepare reported with the right kind (report paths end in class/file)."""
    return sum(any(path.endswith(p["copy"]) for path in reported) for p in planted)


def project_fit(rows: list[dict]) -> dict[str, dict]:
    """Per stage: least-squares a + b*N on the measured sizes, time per image, projection to 1M."""
    ns = np.array([r["n"] for r in rows], dtype=float)
    out = {}
    for stage in STAGES:
        secs = np.array([r["stages"][stage]["seconds"] for r in rows])
        rss = np.array([r["stages"][stage]["peak_rss_mib"] for r in rows])
        b, a = np.polyfit(ns, secs, 1) if len(ns) > 1 else (secs[0] / ns[0], 0.0)
        rb, ra = np.polyfit(ns, rss, 1) if len(ns) > 1 else (0.0, rss[0])
        out[stage] = {
            "a_s": a,
            "ms_per_image": 1000 * b,
            "seconds_1m": a + b * PROJECT_TO,
            "rss_1m_mib": ra + rb * PROJECT_TO,
        }
    return out


def print_table(rows: list[dict], fit: dict[str, dict]) -> None:
    sizes = [r["n"] for r in rows]
    print(
        "\n| stage | "
        + " | ".join(f"{n}: s / ms per image / peak MiB" for n in sizes)
        + " | marginal ms/image between sizes | fit: fixed s + ms/image | 1M: hours / peak GiB |"
    )
    print("|---|" + "---|" * (len(sizes) + 3))
    for stage in STAGES:
        cells = []
        for r in rows:
            m = r["stages"][stage]
            cells.append(f"{m['seconds']:.1f} / {1000 * m['seconds'] / r['n']:.2f} / {m['peak_rss_mib']:.0f}")
        # The cost of one more photo from one size to the next: constant when the stage is linear, whatever
        # its fixed cost (process start, imports, a fixed OOD set), which time per image at one size includes.
        marginal = " / ".join(
            f"{1000 * (b['stages'][stage]['seconds'] - a['stages'][stage]['seconds']) / (b['n'] - a['n']):.2f}"
            for a, b in itertools.pairwise(rows)
        )
        f = fit[stage]
        fitted = f"{f['a_s']:.1f} + {f['ms_per_image']:.2f}"
        print(
            f"| {stage} | {' | '.join(cells)} | {marginal} | {fitted} | "
            f"{f['seconds_1m'] / 3600:.2f} / {f['rss_1m_mib'] / 1024:.1f}"
        )
    for key in ("dvc_status_s", "noop_repro_s", "checkout_prepared_s", "cache_mib", "prepared_files"):
        print(f"| {key} | " + " | ".join(f"{r[key]:.1f}" for r in rows) + " | | | |")
    for r in rows:
        print(f"duplicates at {r['n']}: {r['duplicates']}")
    worst = max(STAGES, key=lambda s: fit[s]["seconds_1m"])
    print(f"\nslowest stage at 1M photos: {worst}, {fit[worst]['seconds_1m'] / 3600:.1f} h")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/abcd-growth"))
    ap.add_argument("--planted-frac", type=float, default=0.01)
    ap.add_argument("--table-only", action="store_true", help="only print the table of <work>/growth.json")
    ap.add_argument("--after-only", type=int, help="only the measurements after the stages, on <work>/repo-N")
    ap.add_argument(
        "--restage",
        metavar="STAGE",
        choices=STAGES,
        help="for each size already built in <work>: copy this repo's src/ into its project and re-time STAGE and "
        "every stage after it (dvc repro -f -s), keeping the earlier stages' rows (after a code change below them)",
    )
    args = ap.parse_args()
    if args.table_only:
        rows = json.loads((args.work / "growth.json").read_text())
        print_table(rows, project_fit(rows))
        return
    if args.restage:
        restage(args.work, args.sizes, args.restage)
        return
    if args.after_only:
        n = args.after_only
        info = json.loads((args.work / f"photos-{n}" / "planted.json").read_text())
        print(json.dumps(after_repro(args.work / f"repo-{n}", info)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "growth.json"
    rows = [r for r in (json.loads(out.read_text()) if out.exists() else []) if r["n"] not in args.sizes]
    for n in args.sizes:
        rows.append(run_size(n, args.work, max(1, int(n * args.planted_frac))))
        rows.sort(key=lambda r: r["n"])
        out.write_text(json.dumps(rows, indent=1) + "\n")  # after each size: a long run keeps what it measured
    print_table(rows, project_fit(rows))


if __name__ == "__main__":
    main()
