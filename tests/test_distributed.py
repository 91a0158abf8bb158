"""Several ranks (abcd.features.distributed): sharding, featurize and fine-tuning on 2 CPU ranks (gloo) against one
process, the two-machine rendezvous on localhost, and a failing rank.

The slow tests run the stage commands on a few real photos per class with EfficientNet-Lite0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from abcd.data.images import Sample, write_manifest
from abcd.features import distributed
from abcd.features.distributed import SINGLE, World, gather_batches, resolve_processes, shard, should_launch
from tests.conftest import CLASSES, REPO
from tests.pipeline_utils import pipeline_env

# Images per class in each split of the small set; ants get one more training image: 17 training images make
# 9 batches of 2 images (3 views each at featurize.batch_size 6), 5 on rank 0 and 4 on rank 1, the last of
# one image; the 3 OOD images (ood_featurize) are one batch: rank 1 has none of it.
PER_CLASS = {"train": 4, "val": 2, "test": 2}
OOD = 3


# --- sharding and gathering (no processes) ----------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch", "size"), [(13, 2, 2), (3, 6, 2), (0, 4, 2), (100, 7, 3), (5, 1, 8)])
def test_shards_are_whole_batches_that_cover_every_row_once(n: int, batch: int, size: int) -> None:
    rows = [shard(n, batch, rank, size) for rank in range(size)]
    assert [i for r in rows for i in r] == list(range(n))  # in order, none lost, none twice, no padding
    for r in rows:
        assert not r or (r.start % batch == 0 and (len(r) % batch == 0 or r.stop == n))  # one process's batches
    counts = [-(-len(r) // batch) for r in rows]
    assert max(counts) - min(counts) <= 1
    assert World(0, size).steps(n, batch) == max(counts)


def test_one_process_gathers_without_a_process_group() -> None:
    items = [(0, "a"), (2, "b")]
    assert list(gather_batches(SINGLE, iter(items), steps=5)) == items
    assert SINGLE.broadcast({"x": 1}) == {"x": 1} and SINGLE.all_gather(3) == [3]
    assert SINGLE.all_reduce_sum([1.5, 2]) == [1.5, 2]


def test_processes_auto_is_one_per_gpu_and_nothing_is_launched_inside_a_rank(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_processes("auto") == 1 and resolve_processes(3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_processes("auto") == 4
    for name in distributed.RANK_ENV:
        monkeypatch.delenv(name, raising=False)
    assert should_launch(1) == 0 and should_launch(2) == 2
    for name, value in zip(distributed.RANK_ENV, ("1", "2", "1", "2")):
        monkeypatch.setenv(name, value)
    assert should_launch(2) == 0  # a rank of a world torchrun made: it joins, it does not launch


# --- fit under DistributedDataParallel, two CPU ranks spawned here -----------------------------------------


def _fit_worker(rank: int, size: int, init: str, out: str, resume_at: int) -> None:
    """One rank: fit a small 2-layer head on blobs; rank 0 saves the result (and a resumed run's) to ``out``."""
    import torch.distributed as dist

    from abcd.training.fit import fit
    from tests.test_train import PARAMS, _blobs

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    world = World(rank, size, rank, size)
    params = PARAMS.__class__(**{**PARAMS.__dict__, "epochs": 4, "batch_size": 15, "grad_clip": 1.0})
    results, states = {}, {}
    for run in ("full", "resumed"):
        torch.manual_seed(0)
        head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        resume = states.get(resume_at) if run == "resumed" else None
        result = fit(
            head,
            _blobs(70, 2, 1),  # 70 images in batches of 15: a last batch of 10, split 5/5
            _blobs(24, None, 2),
            params,
            seed=3,
            resume=resume,
            on_epoch_end=(lambda s: states.setdefault(s["epoch"], s)) if run == "full" else None,
            num_classes=4,
            lr=0.01,
            world=world,
        )
        results[run] = {"history": result.history, "weights": result.head.state_dict()}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: about 15 s
def test_fit_on_two_ranks_equals_one_process_and_resumes_exactly(tmp_path: Path) -> None:
    from abcd.training.fit import fit
    from tests.test_train import PARAMS, _blobs

    out = tmp_path / "ranks.pt"
    init = f"file://{tmp_path / 'store'}"
    torch.multiprocessing.spawn(_fit_worker, args=(2, init, str(out), 2), nprocs=2, join=True)
    ranks = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    params = PARAMS.__class__(**{**PARAMS.__dict__, "epochs": 4, "batch_size": 15, "grad_clip": 1.0})
    one = fit(head, _blobs(70, 2, 1), _blobs(24, None, 2), params, seed=3, num_classes=4, lr=0.01)
    # The same global batches and gradients (up to float summation order): the same losses and weights.
    for mine, theirs in zip(ranks["full"]["history"], one.history, strict=True):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), key
    for name, value in one.head.state_dict().items():
        torch.testing.assert_close(ranks["full"]["weights"][name], value, atol=1e-5, rtol=1e-5)
    # Resumed on two ranks after epoch 2: exactly the uninterrupted two-rank run.
    assert ranks["resumed"]["history"] == ranks["full"]["history"]
    for name, value in ranks["full"]["weights"].items():
        assert torch.equal(ranks["resumed"]["weights"][name], value), name


# --- the stages on two ranks (slow: processes, a real backbone) --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# torch threads of each of 2 ranks on this machine (what launch gives them), and of the reference process:
# oneDNN splits a convolution's sums by thread, so the thread count moves fp32 features by about 5e-6
# (measured here: 2 threads against 1); with equal threads per process they are bit-identical.
THREADS = str(max(1, (os.cpu_count() or 1) // 2))


def _env(**extra: str) -> dict[str, str]:
    env = pipeline_env()
    env["PYTHONPATH"] = str(REPO)  # this checkout's src, whichever copy the venv has installed
    for name in (*distributed.RANK_ENV, "OMP_NUM_THREADS"):
        env.pop(name, None)
    return {**env, **extra}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with manifests of a few real photos per class (absolute paths), an OOD manifest and params."""
    from tests.conftest import require_shared_photos

    photos = require_shared_photos()
    root = tmp_path_factory.mktemp("small_set")
    files = {c: sorted((photos / c).iterdir()) for c in CLASSES}
    start = 0
    for split, n in PER_CLASS.items():
        extra = 1 if split == "train" else 0
        samples = [Sample(str(f), c) for c in CLASSES for f in files[c][start : start + n + (c == "ants") * extra]]
        write_manifest(root / "data" / f"{split}.csv", samples)
        start += n + extra
    (root / "ood").mkdir()
    rows = ["path,photo,package,region,half"] + [
        f"{f},{f.name},test,whole,{'selection' if i % 2 else 'report'}" for i, f in enumerate(files["dogs"][-OOD:])
    ]
    (root / "ood" / "manifest.csv").write_text("\n".join(rows) + "\n")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["backbone"] = "efficientnet_lite0"
    raw["featurize"].update(views=2, batch_size=6)
    raw["runtime"].update(device="cpu", precision="fp32", num_workers=0)
    raw["train"].update(epochs=2, batch_size=8, trainable_blocks=1)
    raw["model"]["dropout"] = 0.0  # dropout masks are drawn per rank: see test_fine_tuning_...
    raw["unknown"]["knn_k"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def _params(root: Path, name: str, **runtime) -> Path:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["runtime"].update(runtime)
    path = root / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _stage(module: str, root: Path, args: list[str], check: bool = True, timeout: float = 600, **env: str):
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=root,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _featurize(root: Path, out: str, params: Path, ood: bool = False, **env: str) -> Path:
    """featurize's features in ``out``; with ``ood``, ood_featurize's beside them in ``out``-ood."""
    _stage("abcd.stages.featurize", root, ["--params", str(params), "--data", "data", "--out", out], **env)
    if ood:
        _stage(
            "abcd.stages.ood_featurize", root, ["--params", str(params), "--ood", "ood", "--out", f"{out}-ood"], **env
        )
    return root / out


def _arrays(features: Path) -> dict[str, np.ndarray]:
    out = {}
    folders = {split: features / split for split in ("train", "val", "test")}
    folders["ood"] = features.with_name(f"{features.name}-ood") / "ood"  # absent unless _featurize(ood=True)
    for split, folder in folders.items():
        for f in sorted(folder.glob("*.npy")):
            out[f"{split}/{f.stem}"] = np.load(f)
    return out


@pytest.fixture(scope="module")
def one_process_features(small_set: Path) -> Path:
    """One process's fp32 features (and the OOD set's), with the torch threads each of two ranks gets."""
    params = _params(small_set, "fp32-1", processes=1)
    return _featurize(small_set, "features-1", params, ood=True, OMP_NUM_THREADS=THREADS)


@pytest.mark.slow
def test_featurize_on_two_ranks_writes_one_process_features(small_set: Path, one_process_features: Path) -> None:
    two = _featurize(small_set, "features-2", _params(small_set, "fp32-2", processes=2), ood=True)
    one_arrays, two_arrays = _arrays(one_process_features), _arrays(two)
    assert one_arrays.keys() == two_arrays.keys() and len(one_arrays["train/paths"]) == 17
    for name, array in one_arrays.items():
        np.testing.assert_array_equal(two_arrays[name], array, err_msg=name)  # fp32: identical, in the same order
    assert json.loads((two / "meta.json").read_text()) == json.loads((one_process_features / "meta.json").read_text())
    assert (two / "backbone.pt").read_bytes() == (one_process_features / "backbone.pt").read_bytes()
    # bf16 autocast: the same batches on each rank; the difference (if any) is printed for the report.
    bf16 = [
        _featurize(small_set, f"features-bf16-{n}", _params(small_set, f"bf16-{n}", processes=n, precision="bf16"))
        for n in (1, 2)
    ]
    diffs = {k: float(np.abs(v - _arrays(bf16[1])[k]).max()) for k, v in _arrays(bf16[0]).items() if "features" in k}
    print(f"bf16 features, 2 ranks against 1 process: max abs difference {max(diffs.values()):.3g} ({diffs})")
    assert max(diffs.values()) <= 1e-2


@pytest.mark.slow
def test_two_machines_joined_by_a_c10d_rendezvous_on_localhost(small_set: Path, one_process_features: Path) -> None:
    """Two separate torchrun launches (one rank each), as on two machines, meet at 127.0.0.1."""
    endpoint, run_id = f"127.0.0.1:{_free_port()}", uuid.uuid4().hex[:8]
    params = _params(small_set, "nodes", processes=1)  # ignored under torchrun: the world is torchrun's
    launches = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
             "--node-rank", str(node), "-m", "abcd.stages.featurize", "--params", str(params),
             "--data", "data", "--out", "features-nodes"],
            cwd=small_set, env=_env(OMP_NUM_THREADS=THREADS), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for node in (0, 1)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    # Rank 0 wrote everything (on one machine); the features equal one process's.
    one, two = _arrays(one_process_features), _arrays(small_set / "features-nodes")
    assert two.keys() == {name for name in one if not name.startswith("ood/")}  # featurize's splits only
    for name, array in two.items():
        np.testing.assert_array_equal(array, one[name], err_msg=name)


@pytest.mark.slow
def test_a_failing_rank_ends_the_stage_with_its_error(small_set: Path, tmp_path: Path) -> None:
    # The last training image, in rank 1's shard only, is not an image: rank 1 fails while rank 0 waits for it.
    data = tmp_path / "data"
    data.mkdir()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    train = (small_set / "data" / "train.csv").read_text().splitlines()
    train[-1] = f"{broken},{train[-1].split(',')[1]}"
    (data / "train.csv").write_text("\n".join(train) + "\n")
    for split in ("val", "test"):
        (data / f"{split}.csv").write_text((small_set / "data" / f"{split}.csv").read_text())
    params = _params(small_set, "fail", processes=2)
    start = time.monotonic()
    proc = _stage(
        "abcd.stages.featurize",
        small_set,
        ["--params", str(params), "--data", str(data), "--out", str(tmp_path / "features")],
        check=False,
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 1 and seconds < 60, (seconds, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    # The rank's own line, and the launcher's last line naming the rank and its error.
    assert any(line.startswith("featurize: error: rank 1 of 2: ") and "broken.jpg" in line for line in lines)
    assert lines[-1].startswith("featurize: error: rank 1 of 2 failed (exit code 1): ") and "broken.jpg" in lines[-1]
    assert not (tmp_path / "features").exists()  # nothing half-written
    print(f"failing rank: the stage ended {seconds:.1f} s after it started")


@pytest.mark.slow
def test_fine_tuning_on_two_ranks_equals_one_process(small_set: Path, one_process_features: Path) -> None:
    """train.trainable_blocks 1, dropout 0: two ranks give one process's model and test predictions (3 decimals)."""
    results = {}
    for n in (1, 2):
        params = _params(small_set, f"train-{n}", processes=n)
        out = small_set / f"train-{n}"
        args = ["--params", str(params), "--features", str(one_process_features), "--data", "data"]
        args += ["--model", f"{out}/model.pt", "--last", f"{out}/last.pt", "--logdir", f"{out}/runs"]
        args += ["--metrics", f"{out}/train.json", "--report", f"{out}/report.json", "--history", f"{out}/history.csv"]
        _stage("abcd.stages.train", small_set, args)
        results[n] = out
        test_args = ["--params", str(params), "--model", f"{out}/model.pt", "--data", "data"]
        test_args += ["--features", str(one_process_features), "--out", f"{out}/test.csv"]
        test_args += ["--detectors", f"{out}/detectors.json"]
        _stage("abcd.stages.test", small_set, test_args)
    import pandas as pd

    one, two = (json.loads((results[n] / "report.json").read_text()) for n in (1, 2))
    assert two["best_epoch"] == one["best_epoch"]
    for key in ("loss", "accuracy", "f1_macro"):
        assert two["val"][key] == pytest.approx(one["val"][key], abs=5e-4), key
    h1, h2 = (pd.read_csv(results[n] / "history.csv") for n in (1, 2))
    np.testing.assert_allclose(h2.to_numpy(), h1.to_numpy(), atol=5e-4)
    p1, p2 = (pd.read_csv(results[n] / "test.csv") for n in (1, 2))
    assert (p2["prediction"] == p1["prediction"]).all()
    probs = [c for c in p1.columns if c.startswith("prob_")]
    diff = float(np.abs(p2[probs].to_numpy() - p1[probs].to_numpy()).max())
    print(f"fine-tuning, 2 ranks against 1 process: test probabilities differ by at most {diff:.2g}")
    assert diff < 5e-4
    # Resumed on two ranks from the two-rank run's last state: it has nothing left to train and keeps its result.
    resume = yaml.safe_load(_params(small_set, "train-2", processes=2).read_text())
    resume["train"]["resume"] = True
    (small_set / "params-resume.yaml").write_text(yaml.safe_dump(resume, sort_keys=False))
    out = results[2]
    before = (out / "model.pt").read_bytes()
    args = ["--params", "params-resume.yaml", "--features", str(one_process_features), "--data", "data"]
    args += ["--model", f"{out}/model.pt", "--last", f"{out}/last.pt", "--logdir", f"{out}/runs"]
    args += ["--metrics", f"{out}/train.json", "--report", f"{out}/report.json", "--history", f"{out}/history.csv"]
    proc = _stage("abcd.stages.train", small_set, args)
    assert "resuming after epoch 2" in proc.stdout
    assert json.loads((out / "report.json").read_text()) == two
    assert len(before) > 0 and os.path.getsize(out / "model.pt") > 0
