import os

import pytest
import torch

from abcd.core.params import ParamsError, RuntimeParams
from abcd.features.runtime import auto_num_workers, cpu_has_fast_bf16, resolve_runtime, seed_everything

AMX = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse avx2\n"


def test_bf16_detection_reads_cpu_flags() -> None:
    assert cpu_has_fast_bf16(AMX)
    assert cpu_has_fast_bf16("flags : avx512_bf16\n")
    assert not cpu_has_fast_bf16(OLD)


def test_explicit_precision_and_workers(monkeypatch) -> None:
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="fp32", num_workers=0, processes=1))
    assert rt.device.type == "cpu" and not rt.bf16 and rt.num_workers == 0 and rt.precision == "fp32"
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="bf16", num_workers=3, processes=1))
    assert rt.bf16 and rt.num_workers == 3 and rt.precision == "bf16"
    # "auto" workers follow auto_num_workers' rules for the core count os.cpu_count() reports, with a CPU forward.
    auto = RuntimeParams(device="cpu", precision="bf16", num_workers="auto", processes=1)
    for cores, workers in ((1, 0), (2, 0), (3, 2), (8, 4), (64, 4)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert resolve_runtime(auto).num_workers == workers, cores
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown core count: taken as one
    assert resolve_runtime(auto).num_workers == 0


def test_auto_workers_leave_a_small_cpu_to_the_forward_pass() -> None:
    # On <= 2 cores a CPU forward uses them all; workers compete with it (measured slower).
    assert auto_num_workers(use_cuda=False, cores=1) == 0
    assert auto_num_workers(use_cuda=False, cores=2) == 0
    assert auto_num_workers(use_cuda=False, cores=8) == 4
    # A GPU forward leaves the CPU free: decoding overlaps it even on 2 cores.
    assert auto_num_workers(use_cuda=True, cores=2) == 1
    assert auto_num_workers(use_cuda=True, cores=1) == 0


def test_cuda_requested_without_a_gpu_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"'runtime\.device' is 'cuda' but no CUDA device"):
        resolve_runtime(RuntimeParams(device="cuda", precision="auto", num_workers=0, processes=1))


def test_bf16_autocast_runs_a_conv() -> None:
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="bf16", num_workers=0, processes=1))
    conv = torch.nn.Conv2d(3, 4, 3)
    with rt.autocast():
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.bfloat16


def test_seed_everything_repeats_draws() -> None:
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_release_freed_memory_calls_malloc_trim_and_is_a_no_op_without_glibc(monkeypatch) -> None:
    from abcd.features import runtime

    calls = []
    monkeypatch.setattr(runtime, "_malloc_trim", lambda: calls.append)
    runtime.release_freed_memory()
    assert calls == [0]  # malloc_trim(0): trim all free pages, keep no padding
    monkeypatch.setattr(runtime, "_malloc_trim", lambda: None)
    runtime.release_freed_memory()  # no libc function: nothing to call, no error
    assert calls == [0]


def test_malloc_trim_lookup_tolerates_a_missing_libc(monkeypatch) -> None:
    import ctypes

    from abcd.features import runtime

    runtime._malloc_trim.cache_clear()

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    assert runtime._malloc_trim() is None
    runtime._malloc_trim.cache_clear()  # the real lookup again for later tests


def test_extract_features_trims_the_heap_every_few_batches(monkeypatch) -> None:
    from abcd.features import engine

    trims = []
    monkeypatch.setattr(engine, "release_freed_memory", lambda: trims.append(1))
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="fp32", num_workers=0, processes=1))
    batches = [(torch.randn(2, 3, 4, 4), [0, 1]) for _ in range(2 * engine.TRIM_EVERY + 1)]
    feats, labels = engine.extract_features(torch.nn.Flatten(), batches, rt)
    assert feats.shape == (2 * len(batches), 48) and labels.tolist() == [0, 1] * len(batches)
    assert len(trims) == 2
