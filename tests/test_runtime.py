import pytest
import torch

from src.params import ParamsError, RuntimeParams
from src.runtime import auto_num_workers, cpu_has_fast_bf16, resolve_runtime, seed_everything

AMX = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse avx2\n"


def test_bf16_detection_reads_cpu_flags() -> None:
    assert cpu_has_fast_bf16(AMX)
    assert cpu_has_fast_bf16("flags : avx512_bf16\n")
    assert not cpu_has_fast_bf16(OLD)


def test_explicit_precision_and_workers() -> None:
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="fp32", num_workers=0))
    assert rt.device.type == "cpu" and not rt.bf16 and rt.num_workers == 0 and rt.precision == "fp32"
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="bf16", num_workers="auto"))
    assert rt.bf16 and rt.num_workers >= 0


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
        resolve_runtime(RuntimeParams(device="cuda", precision="auto", num_workers=0))


def test_bf16_autocast_runs_a_conv() -> None:
    rt = resolve_runtime(RuntimeParams(device="cpu", precision="bf16", num_workers=0))
    conv = torch.nn.Conv2d(3, 4, 3)
    with rt.autocast():
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.bfloat16


def test_seed_everything_repeats_draws() -> None:
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
