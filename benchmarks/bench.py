"""Performance benchmark: prints a table; run on an otherwise idle machine.

    python benchmarks/bench.py                              # the default backbone, full naive baseline
    python benchmarks/bench.py --backbone resnet101 --naive-epochs 1   # naive time extrapolated

Measured in one run, medians of repeats where repeated:
 1. ceiling: bare backbone forward passes on pre-made tensors, fp32 and bf16 (images/s), at
    the best of several batch sizes (a CPU forward is fastest on batches small enough for the
    activations to stay in cache);
 2. featurisation as the pipeline does it (decode + augment + forward, the stage's batch and
    workers), as a fraction of the bf16 ceiling measured right before each repeat: this shared
    machine's speed drifts by 10-30% over minutes;
 3. the original project's loop (fp32 backbone forward on freshly decoded and augmented
    images every epoch, same epochs and data) against `dvc repro` from scratch, with test
    macro F1 of both;
 4. an lr-only experiment (`dvc exp run -S lr=...`, the literal command: it re-runs the stages
    downstream of the head: train, export, quantize, test, evaluate, ood_test, ood_evaluate, int8_gates,
    report) after the full repro (median of three learning rates),
    as a fraction of the full repro (target: at most 1/3), and its fixed floor: a `dvc exp run`
    that runs nothing, plus starting train (torch and an optimizer, which imports torch._dynamo)
    and test (torch) processes;
 5. time and peak RSS of each stage, its command taken from dvc.yaml and run on its own;
 7. the featurize stage as ``runtime.processes`` 1 and 2 ranks (``--ranks``): wall time of the whole
    command (start-up, launch, model build, every split) and the views it made per second of it.
``--ranks-only`` measures 7 alone (after prepare).
``--pipeline-only`` measures 3's `dvc repro`, 4, and 5 for the head's stages only (no ceilings,
featurize throughput or naive loop): the pipeline ratios, quickly.
A backbone whose ImageNet weights cannot be had offline is benchmarked with random
weights written into a private torch cache (timings are the same; F1 is then meaningless).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from abcd.core.params import load_params  # noqa: E402
from abcd.data.images import ImageDataset, read_manifest  # noqa: E402
from abcd.evaluation.metrics import f1_macro  # noqa: E402
from abcd.features.engine import extract_features, make_loader, prepare_model  # noqa: E402
from abcd.features.runtime import cpu_has_fast_bf16, resolve_runtime, seed_everything  # noqa: E402
from abcd.features.transforms import eval_transform, train_transform  # noqa: E402
from abcd.models.backbones import BackboneUnavailableError, build_backbone  # noqa: E402
from abcd.models.head import build_head  # noqa: E402
from tests.pipeline_utils import copy_repo, pipeline_env, run  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def ceiling(module: torch.nn.Module, size: int, bf16: bool, batch: int, repeats: int) -> float:
    """Images/s of the backbone alone, inference mode, channels_last, on one pre-made batch."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    module = module.eval().to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            module(x)

    timed(step, 2)  # warm-up: oneDNN picks kernels on the first calls
    return batch / statistics.median(timed(step, repeats))


def best_ceiling(
    module: torch.nn.Module, size: int, bf16: bool, batches: list[int], repeats: int
) -> tuple[float, int, dict[int, float]]:
    """The ceiling at its fastest batch size: (images/s, that batch, images/s per batch)."""
    curve = {b: ceiling(module, size, bf16, b, repeats) for b in batches}
    best = max(curve, key=curve.get)
    return curve[best], best, curve


def startup_seconds(code: str, env: dict[str, str], repeats: int) -> float:
    """Median wall time of a fresh Python process running ``code``."""
    return statistics.median(timed(lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True), repeats))


NAIVE_LR = 0.003  # the lr chosen on val for a randomly started head (research/README.md: Head cross-validation)


def naive_baseline(params, backbone, data: Path, epochs: int, measure_epochs: int) -> dict:
    """The original project's loop: every epoch decodes, augments and runs the fp32 backbone again."""
    seed_everything(params.seed)
    rt = resolve_runtime(params.runtime.__class__(device="cpu", precision="fp32", num_workers="auto", processes=1))
    module = prepare_model(backbone.module, rt)
    classes = params.classes
    train_set = read_manifest(data / "train.csv", classes)
    val_set = read_manifest(data / "val.csv", classes)
    test_set = read_manifest(data / "test.csv", classes)
    head = build_head(backbone.num_features, len(classes), params.model.dropout)
    # A random start, as the original loop had: at the lr that suits one (train.lr fits the probe start).
    opt = torch.optim.AdamW(head.parameters(), lr=NAIVE_LR, weight_decay=params.train.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.train.epochs)
    best, best_loss = None, float("inf")
    start = time.perf_counter()
    per_epoch = []
    for epoch in range(measure_epochs):
        t0 = time.perf_counter()
        ds = ImageDataset(train_set, classes, train_transform(backbone.preprocess, params.augment), seed=epoch)
        feats, labels = extract_features(module, make_loader(ds, params.train.batch_size, rt), rt, "naive train")
        x, y = torch.from_numpy(feats), torch.from_numpy(labels).long()
        head.train()
        for idx in torch.randperm(len(y)).split(params.train.batch_size):
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        vds = ImageDataset(val_set, classes, eval_transform(backbone.preprocess))
        vf, vl = extract_features(module, make_loader(vds, params.predict.batch_size, rt), rt, "naive val")
        head.eval()
        with torch.no_grad():
            val_loss = torch.nn.functional.cross_entropy(head(torch.from_numpy(vf)), torch.from_numpy(vl).long())
        if val_loss < best_loss:
            best, best_loss = copy.deepcopy(head), float(val_loss)
        per_epoch.append(time.perf_counter() - t0)
    tds = ImageDataset(test_set, classes, eval_transform(backbone.preprocess))
    t0 = time.perf_counter()
    tf, tl = extract_features(module, make_loader(tds, params.predict.batch_size, rt), rt, "naive test")
    test_time = time.perf_counter() - t0
    measured = time.perf_counter() - start
    with torch.no_grad():
        pred = best.eval()(torch.from_numpy(tf)).argmax(1).numpy()
    total = measured if measure_epochs == epochs else statistics.median(per_epoch) * epochs + test_time
    return {
        "seconds": total,
        "extrapolated": measure_epochs != epochs,
        "measured_epochs": measure_epochs,
        "f1_macro": f1_macro(tl, pred, len(classes)) if measure_epochs == epochs else None,
    }


def bench_project(dest: Path, backbone: str, precision: str | None = None) -> Path:
    """A copy of the repo on the default (full) data, with ``backbone`` (and ``precision``, if given)."""
    copy_repo(dest)
    sources = yaml.safe_load((dest / "data" / "sources.yaml").read_text())
    # The copy lives elsewhere: make the local source sets' relative paths absolute.
    for entries in sources["sets"].values():
        for entry in entries:
            location = entry["location"]
            if "://" not in location and not Path(location).is_absolute():
                entry["location"] = str((REPO / location).resolve())
    (dest / "data" / "sources.yaml").write_text(yaml.safe_dump(sources, sort_keys=False))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["model"]["backbone"] = backbone
    if precision is not None:
        params["runtime"]["precision"] = precision
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


# Linux carries a process's peak RSS across fork and exec, so a stage forked from this
# (large) process would report at least our own peak. A small launcher forks it instead.
_LAUNCH = (
    "import os, subprocess, sys, time; t = time.perf_counter(); "
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); _, status, usage = os.wait4(p.pid, 0); "
    "print(status, time.perf_counter() - t, usage.ru_maxrss)"
)


def stage_rss(repo: Path, env: dict[str, str], only: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """(seconds, peak RSS MiB) of each stage command from dvc.yaml (or those in ``only``), run on its own."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        if only and name not in only:
            continue
        # dvc.yaml's commands start with environment assignments (PYTHONPATH=src): into env, not argv.
        argv = shlex.split(stage["cmd"])
        assigned = dict(a.split("=", 1) for a in itertools.takewhile(lambda a: "=" in a and a[0] != "-", argv))
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCH, *argv[len(assigned) :]],
            cwd=repo,
            env={**env, **assigned},
            capture_output=True,
            text=True,
            check=True,
        )
        status, seconds, max_kib = launched.stdout.split()
        if int(status) != 0:
            raise RuntimeError(f"stage {name} failed ({status}): {launched.stderr[-2000:]}")
        out[name] = (float(seconds), int(max_kib) / 1024)
    return out


def _timed_run(cmd: list[str], repo: Path, env: dict[str, str]) -> float:
    """Seconds ``cmd`` takes; no time limit (a busy machine can take many times the idle time)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default: model.backbone in params.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--batches", default="4,8,12,16,32,64", help="batch sizes the ceiling is measured at (the best counts)"
    )
    parser.add_argument("--naive-epochs", type=int, default=None, help="epochs to measure (default: all)")
    parser.add_argument("--precision-check", action="store_true", help="also run the pipeline with fp32 features")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="runtime.precision of the copy the pipeline runs in (fp32: the timing of a CPU without bf16)",
    )
    parser.add_argument(
        "--pipeline-only", action="store_true", help="only the full repro, the lr experiments and the stages (3-5)"
    )
    parser.add_argument("--ranks", default="1,2", help="runtime.processes values featurize is timed at (7)")
    parser.add_argument("--ranks-only", action="store_true", help="only 7: featurize at each of --ranks")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    args.backbone = args.backbone or params.model.backbone
    env = pipeline_env()
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory(prefix="abcd-bench-") as tmp:
        try:
            backbone = build_backbone(args.backbone, pretrained=True)
            weights = "ImageNet"
        except BackboneUnavailableError:
            # The documented offline route: a weight file in torch's cache (random weights here).
            backbone = build_backbone(args.backbone, pretrained=False)
            import torchvision

            enum = {"resnet101": "ResNet101_Weights", "vgg16": "VGG16_Weights"}[args.backbone]
            url = getattr(torchvision.models, enum).IMAGENET1K_V1.url
            torch_home = Path(tmp) / "torch"
            (torch_home / "hub" / "checkpoints").mkdir(parents=True)
            reference = getattr(torchvision.models, args.backbone)(weights=None)
            torch.save(reference.state_dict(), torch_home / "hub" / "checkpoints" / os.path.basename(url))
            env["TORCH_HOME"] = str(torch_home)
            weights = "random (offline)"
        size = backbone.preprocess.input_size
        torch.set_num_threads(os.cpu_count() or 1)

        # 1. ceiling, at the best batch size of each precision
        batches = [int(b) for b in args.batches.split(",")]
        curves = {}
        for name, on in (("fp32", False), ("bf16", True)):
            if args.pipeline_only or (on and not cpu_has_fast_bf16()):
                continue
            curves[name] = best_ceiling(backbone.module, size, on, batches, args.repeats)
            rate, batch, curve = curves[name]
            by_batch = ", ".join(f"{b}: {v:.0f}" for b, v in curve.items())
            rows.append((f"1. ceiling {name} (img/s)", f"{rate:.1f} at batch {batch} (by batch: {by_batch})"))

        # Full pipeline from scratch in a copy of the repo (also prepares the data for 2 and 3).
        repo = bench_project(Path(tmp) / "repo", args.backbone, args.precision)
        run(["git", "init", "-q"], repo, env)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "bench"], repo, env)
        if args.ranks_only:
            run(["dvc", "repro", "prepare"], repo, env)
            featurize_ranks(repo, env, [int(n) for n in args.ranks.split(",")], args.repeats, rows)
            _print_rows(args, "", rows)
            return
        repro_s = _timed_run(["dvc", "repro"], repo, env)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "repro"], repo, env)  # the baseline experiments and metrics diff compare to
        pipeline_f1 = json.loads((repo / "metrics/test.json").read_text())["test"]["f1_macro"]
        feat_log = json.loads((repo / "data/features/meta.json").read_text())

        if not args.pipeline_only:
            throughput_and_naive(args, params, backbone, repo, curves, repro_s, pipeline_f1, rows)
        else:
            rows.append(("3. pipeline `dvc repro` from scratch (s)", f"{repro_s:.0f}"))

        # 4. lr-only experiments (distinct lrs: DVC's run cache would restore a repeated one)
        exp_s = statistics.median(
            _timed_run(["dvc", "exp", "run", "-S", f"lr={params.lr * factor:g}"], repo, env) for factor in (3, 0.3, 2)
        )
        rows.append(("4. lr-only `dvc exp run -S lr=...` (s)", f"{exp_s:.1f} ({exp_s / repro_s:.0%} of full repro)"))
        # What a user compares experiments with: the default table's width, the diff after an lr change.
        header = run(["dvc", "exp", "show", "--csv"], repo, env, stdout_only=True).splitlines()[0]
        diff = run(["dvc", "metrics", "diff", "--md"], repo, env, stdout_only=True).strip()
        rows.append(("4. `dvc exp show --csv` columns, after the 3 experiments", str(len(header.split(",")))))
        rows.append(("4. `dvc metrics diff` rows, last experiment against the repro", str(len(diff.splitlines()) - 2)))
        print(f"dvc exp show --csv header:\n{header}\n\ndvc metrics diff --md:\n{diff}\n")
        # Its floor: what the same experiment costs before any stage does work.
        noop = statistics.median([_timed_run(["dvc", "exp", "run"], repo, env) for _ in range(3)])
        torch_s = startup_seconds("import torch", env, 3)
        optim_s = startup_seconds("import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])", env, 3)
        floor = noop + optim_s + torch_s
        rows.append(
            (
                "4. ... its floor: no-op `dvc exp run` + train process (torch + optimizer) + test process (torch)",
                f"{noop:.1f} + {optim_s:.1f} + {torch_s:.1f} = {floor:.1f} s ({floor / repro_s:.0%} of full repro)",
            )
        )

        # The experiments left their lr in params.yaml: back to the default for 6 and 5.
        run(["git", "checkout", "--", "params.yaml"], repo, env)

        # 6. bf16 against fp32 features: the same pipeline with runtime.precision=fp32
        if args.precision_check:
            fp32_s = _timed_run(["dvc", "exp", "run", "-S", "runtime.precision=fp32"], repo, env)
            fp32_f1 = json.loads((repo / "metrics/test.json").read_text())["test"]["f1_macro"]
            rows.append(
                (
                    "6. test macro F1: bf16 / fp32 features (exp run s)",
                    f"{pipeline_f1:.4f} / {fp32_f1:.4f}, "
                    f"diff {100 * (pipeline_f1 - fp32_f1):+.2f} points ({fp32_s:.0f} s)",
                )
            )
            run(["git", "checkout", "--", "params.yaml"], repo, env)

        # 5. time and peak RSS per stage (each stage's command on its own): those a head-only experiment runs.
        head = ("train", "export", "quantize", "test", "evaluate", "ood_test", "ood_evaluate", "int8_gates", "report")
        stages = stage_rss(repo, env, only=head if args.pipeline_only else ())
        for name, (secs, mib) in stages.items():
            rows.append((f"5. stage {name}: time (s), peak RSS (MiB)", f"{secs:.1f}, {mib:.0f}"))
        head_s = sum(stages[name][0] for name in head if name in stages)
        rows.append((f"5. the head's stages ({' + '.join(head)}) on their own (s)", f"{head_s:.1f}"))
        if not args.pipeline_only:
            featurize_ranks(repo, env, [int(n) for n in args.ranks.split(",")], max(1, args.repeats // 2), rows)

    _print_rows(args, f"({weights} weights), features in {feat_log['precision']}", rows)


def _print_rows(args: argparse.Namespace, note: str, rows: list[tuple[str, str]]) -> None:
    print(
        f"\nbackbone {args.backbone} {note}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print("| measurement | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


def featurize_ranks(repo: Path, env: dict[str, str], ranks: list[int], repeats: int, rows: list) -> None:
    """7. The featurize stage's own command at ``runtime.processes`` = each of ``ranks`` (median wall of
    ``repeats``; ratios against the first), and the features each wrote against the first's."""
    import numpy as np

    stage = shlex.split(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["featurize"]["cmd"])
    out = stage.index("--out") + 1
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    base, first = None, None
    for n in ranks:
        raw["runtime"]["processes"] = n
        (repo / f"params-ranks-{n}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        cmd = [*stage[:out], f"data/features-ranks-{n}", *stage[out + 1 :], "--params", f"params-ranks-{n}.yaml"]
        wall = statistics.median(_timed_run(cmd, repo, env) for _ in range(repeats))
        features = repo / f"data/features-ranks-{n}"
        # Views made: every feature row (training images: their augmented views and the eval view).
        views = sum(int(np.prod(np.load(f, mmap_mode="r").shape[:-1])) for f in features.glob("*/*features.npy"))
        base = base or wall
        if first is None:
            first, same = features, "reference"
        else:
            diffs = [
                float(np.abs(np.load(f) - np.load(first / f.relative_to(features))).max())
                for f in features.glob("*/*features.npy")
            ]
            same = f"max abs difference from {ranks[0]} rank(s): {max(diffs):.2g}"
        rows.append(
            (
                f"7. featurize stage, runtime.processes {n}: wall (s), views/s, against {ranks[0]}",
                f"{wall:.1f}, {views / wall:.1f}, {base / wall:.2f}x ({same})",
            )
        )


def throughput_and_naive(
    args: argparse.Namespace,
    params,
    backbone,
    repo: Path,
    curves: dict,
    repro_s: float,
    pipeline_f1: float,
    rows: list[tuple[str, str]],
) -> None:
    """Sections 2 and 3: featurize throughput against the ceiling, the naive loop against the repro."""
    size = backbone.preprocess.input_size
    batches = [int(b) for b in args.batches.split(",")]
    # 2. featurisation throughput, as the stage runs it (train views with augmentation + the eval
    # view), each repeat against a ceiling measured just before it at the ceiling's best batch.
    rt = resolve_runtime(params.runtime)
    module = prepare_model(backbone.module, rt)
    samples = read_manifest(repo / "data/prepared/train.csv", params.classes, root=repo)
    views = params.featurize.views
    ds = ImageDataset(
        samples,
        params.classes,
        train_transform(backbone.preprocess, params.augment),
        views=views,
        seed=params.seed,
        root=repo,
        extra=eval_transform(backbone.preprocess),
    )
    loader = make_loader(ds, max(1, params.featurize.batch_size // (views + 1)), rt)
    if rt.precision not in curves:  # bf16 forced in params on a CPU without native bf16
        curves[rt.precision] = best_ceiling(backbone.module, size, rt.bf16, batches, args.repeats)
    _, ref_batch, _ = curves[rt.precision]
    feats, fractions = [], []
    for _ in range(max(1, args.repeats // 2)):
        ref = ceiling(module, size, rt.bf16, ref_batch, args.repeats)
        (seconds,) = timed(lambda: extract_features(module, loader, rt, "bench"), 1)
        feats.append(len(samples) * (views + 1) / seconds)
        fractions.append(feats[-1] / ref)
    rows.append(
        (
            f"2. featurize, decode+augment+forward, {rt.precision}, batch {loader.batch_size} x "
            f"{views + 1} views, {rt.num_workers} workers (img/s)",
            f"{statistics.median(feats):.1f}",
        )
    )
    rows.append(
        (
            "2. ... as a fraction of the ceiling measured before each repeat",
            f"{statistics.median(fractions):.0%} (repeats: {', '.join(f'{f:.0%}' for f in fractions)})",
        )
    )

    # 3. naive baseline vs pipeline
    epochs = params.train.epochs
    naive = naive_baseline(params, backbone, repo / "data/prepared", epochs, args.naive_epochs or epochs)
    note = f" (extrapolated from {naive['measured_epochs']} epochs)" if naive["extrapolated"] else ""
    rows.append((f"3. naive loop, fp32, {epochs} epochs (s)", f"{naive['seconds']:.0f}{note}"))
    rows.append(("3. pipeline `dvc repro` from scratch (s)", f"{repro_s:.0f}"))
    rows.append(("3. speed-up", f"{naive['seconds'] / repro_s:.1f}x"))
    naive_f1 = "n/a" if naive["f1_macro"] is None else f"{naive['f1_macro']:.4f}"
    rows.append(("3. test macro F1: naive / pipeline", f"{naive_f1} / {pipeline_f1:.4f}"))


if __name__ == "__main__":
    main()
