"""Seeding, device and precision choices shared by every torch stage."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from abcd.core.params import ParamsError, RuntimeParams


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has native bf16 matmul (AMX or AVX512-BF16).

    Elsewhere bf16 autocast is emulated and slower than fp32, so "auto" must not pick it.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def use_deterministic_algorithms(mode: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its one-second import of ``torch._inductor``.

    The public function also sets inductor's ``deterministic`` flag, which only torch.compile
    reads; nothing here compiles. Where inductor is not loaded, the C++ switch is therefore the
    whole effect, and skipping the import is a tenth of a head-only experiment's time.
    """
    if "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode)


@dataclass(frozen=True)
class Runtime:
    """Where and how forward passes run."""

    device: torch.device
    bf16: bool
    num_workers: int

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device, or a no-op for fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def resolve_runtime(params: RuntimeParams) -> Runtime:
    """Turn ``auto`` settings into concrete ones for this machine."""
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("params: 'runtime.device' is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    use_cuda = params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if params.precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if use_cuda else cpu_has_fast_bf16()
    else:
        bf16 = params.precision == "bf16"
    num_workers = auto_num_workers(use_cuda) if params.num_workers == "auto" else params.num_workers
    return Runtime(device=device, bf16=bf16, num_workers=num_workers)


def auto_num_workers(use_cuda: bool, cores: int | None = None) -> int:
    """DataLoader workers for ``runtime.num_workers: auto``.

    Workers overlap decoding with the forward pass only if they have cores of their own. A CPU
    forward already uses every core, and on 2 cores a worker made featurize slower, not faster
    (lite2: 62 against 74 img/s with none; lite0: 92 against 109): decoding and augmenting cost
    ~2 ms a view against ~13 ms of forward, so there is little to overlap, and the worker takes
    its time slices from torch's threads. Larger machines (unmeasured here) and GPU runs, where
    the forward leaves the CPU free, keep one core for the main process and up to 4 workers.
    """
    cores = cores or os.cpu_count() or 1
    if not use_cuda and cores <= 2:
        return 0
    return min(4, max(0, cores - 1))


@functools.cache
def _malloc_trim():  # -> ctypes function or None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``); a no-op without glibc.

    Decoding in the forward's own process (no DataLoader workers) allocates buffers of a new
    size for every random crop, and glibc keeps the fragmented heap: featurize's RSS climbed
    from 1.0 to 2.2 GiB over the training split. Trimming every few batches held it at 1.2 GiB
    for about 2% of featurize's time (docs/performance.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode + inference mode, restoring the previous training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
