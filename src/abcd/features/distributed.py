"""Several processes (ranks) for featurize and fine-tuning: ``torch.distributed``, launched by torchrun.

``runtime.processes: 1`` (the default) runs a stage as one plain process: no launch and
no process group. With N > 1 (or ``auto`` on a machine with several GPUs) the stage command
relaunches itself as N local ranks through ``torch.distributed.run`` (torchrun's own code: a
c10d rendezvous on a free localhost port) and waits for them, so DVC still sees one command.
A stage that torchrun started itself (RANK, WORLD_SIZE and LOCAL_RANK set: several machines,
docs/scaling-out.md) is a rank already and joins its world whatever ``runtime.processes`` says.

Inside the ranks, :func:`joined` sets up the process group (gloo on CPU; NCCL for CUDA tensors
with gloo beside it for the CPU tensors the stages exchange), :func:`shard` gives each rank
contiguous whole batches of a split, and :func:`gather_batches` brings every rank's batches
to rank 0 (or to all ranks), which alone writes the outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
import torch.distributed as dist

from abcd.core.errors import UserError
from abcd.core.params import RuntimeParams
from abcd.features.runtime import Runtime, auto_num_workers, resolve_runtime

T = TypeVar("T")

# What torchrun sets in each rank's environment (torch.distributed.run: "Environment variables").
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class RankFailedError(UserError, RuntimeError):
    """One rank of a multi-process stage failed; the message names the rank and its error."""


def resolve_processes(value: int | Literal["auto"]) -> int:
    """``runtime.processes``: ``auto`` is one rank per CUDA GPU, or 1 without CUDA."""
    if value == "auto":
        return torch.cuda.device_count() if torch.cuda.is_available() else 1
    return value


def under_torchrun() -> bool:
    """True in a process that torchrun (or :func:`launch`) started as one rank of a world."""
    return all(name in os.environ for name in RANK_ENV)


def should_launch(processes: int | Literal["auto"]) -> int:
    """How many local ranks to launch: 0 (run here, in this process) unless more than one is asked
    for and this process is not a rank already."""
    n = resolve_processes(processes)
    return n if n > 1 and not under_torchrun() else 0


def launch(module: str, argv: Sequence[str] | None, processes: int) -> int:
    """Run ``python -m module argv`` as ``processes`` local ranks, exactly as ``torchrun --standalone
    --nproc-per-node processes -m module argv`` would; wait for them. 0 when every rank succeeds.

    A failing rank ends the others at once (torchrun's agent stops them: none waits forever in a
    collective) and is raised as :class:`RankFailedError` with its message; torchrun's own report
    of every failed rank is printed before it.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    import abcd

    argv = list(sys.argv[1:] if argv is None else argv)
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "PYTHONPATH")}
    # CPU ranks share the cores: each gets its share of torch's threads (torchrun alone would give each 1).
    # OMP_NUM_THREADS, not torch.set_num_threads in the rank: a value the user set is kept.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    # The ranks import this very code, wherever the stage runs from (an installed `abcd` could be another copy).
    root = str(Path(abcd.__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, saved["PYTHONPATH"]]))
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", module, *argv]))
    except ChildFailedError as err:
        print(err.format_msg(), file=sys.stderr)
        # The rank that failed first by itself: one recorded by joined(), not killed by torchrun's agent,
        # then the earliest (error files time failures to the second, so a secondary failure can tie).
        rank, failure = min(
            err.failures.items(),
            key=lambda item: (not isinstance(item[1].message, dict), item[1].exitcode < 0, item[1].timestamp),
        )
        message = failure.message
        if isinstance(message, dict):  # from the rank's error file (joined() writes it; otherwise a str)
            message = message.get("message", "")
        raise RankFailedError(
            f"rank {rank} of {processes} failed (exit code {failure.exitcode}): {message}".strip()
        ) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def run_stage(module: str, argv: Sequence[str] | None, params: RuntimeParams, work: Callable[..., None]) -> int:
    """A stage's ``work(world, runtime)`` here, or, when :func:`should_launch` says so, this stage's command
    (``python -m module argv``) launched as that many ranks, each of which comes back here as one rank."""
    processes = should_launch(params.processes)
    if processes:
        return launch(module, argv, processes)
    with joined(params) as (world, runtime):
        work(world, runtime)
    return 0


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; the defaults are the single process of ``processes: 1``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes outputs, logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, n: int, batch: int) -> range:
        """This rank's rows of ``n``: see :func:`shard`."""
        return shard(n, batch, self.rank, self.size)

    def steps(self, n: int, batch: int) -> int:
        """Batches of the rank with the most: every rank takes part in that many gathers."""
        batches = -(-n // batch)
        return -(-batches // self.size)

    def map_shard(
        self, n: int, batch: int, run: Callable[[range], Iterable[T]], to_all: bool = False
    ) -> Iterator[tuple[int, T]]:
        """``run`` on this rank's rows of ``n`` (:meth:`shard`: one output per batch of ``batch``), each
        output with its batch's first row, and every rank's outputs at rank 0 (or on every rank with
        ``to_all``): :func:`gather_batches`. Every rank must iterate it to the end."""
        rows = self.shard(n, batch)
        numbered = ((rows.start + i * batch, out) for i, out in enumerate(run(rows)))
        return gather_batches(self, numbered, self.steps(n, batch), to_all)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled: any picklable object, tensors included)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64 on the CPU: exact for counts)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


SINGLE = World()  # the one process of runtime.processes: 1


def shard(n: int, batch: int, rank: int, size: int) -> range:
    """Rank ``rank``'s contiguous rows of ``n``: whole batches of ``batch``, the ranks' shares within
    one batch of each other. No row is padded, repeated or lost (unlike DistributedSampler, which
    pads the last ranks with repeats), and each rank's batches are exactly the batches one process
    would make, so a batched forward pass sees the same inputs whatever the number of ranks."""
    batches = -(-n // batch)
    per, extra = divmod(batches, size)
    first = rank * per + min(rank, extra)
    count = per + (rank < extra)
    return range(min(n, first * batch), min(n, (first + count) * batch))


def gather_batches(
    world: World, batches: Iterable[tuple[int, T]], steps: int, to_all: bool = False
) -> Iterator[tuple[int, T]]:
    """Every rank's ``(first row, batch)`` items at rank 0 (or on every rank with ``to_all``), one
    step at a time: rank 0 holds at most one batch per rank, never a whole split. Every rank must
    iterate to the end (``steps`` collectives each); other ranks get nothing without ``to_all``.

    Objects, not tensors: a rank whose rows ran out sends None, and ranks need not agree on shapes.
    """
    it = iter(batches)
    if not world.distributed:
        yield from it
        return
    for _ in range(steps):
        item = next(it, None)
        if to_all:
            items = world.all_gather(item)
        else:
            items = [None] * world.size if world.is_main else None
            dist.gather_object(item, items, dst=0)
        for got in items or ():
            if got is not None:
                yield got
    if next(it, None) is not None:
        raise RuntimeError(f"rank {world.rank}: more batches than the {steps} steps every rank takes")


def _record(err: BaseException) -> None:
    """Write ``err`` to torchrun's error file for this rank, so that the launcher's report shows it.

    Not an error raised inside ``torch.distributed`` (a collective whose peer is gone): that is this
    rank's reaction to another's failure, which must not pass for the cause in the launcher's message.
    """
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    inside = f"{os.sep}torch{os.sep}distributed{os.sep}"
    if not any(inside in frame.filename for frame in traceback.extract_tb(err.__traceback__)):
        ErrorHandler().record_exception(err)


@contextlib.contextmanager
def joined(params: RuntimeParams) -> Iterator[tuple[World, Runtime]]:
    """This process's world and runtime for the stage's work; a process group while inside.

    Outside torchrun (or in a world of one): the single-process world and ``resolve_runtime``'s
    runtime, nothing else. In a rank: the process group (backend below), the rank's own GPU
    (``cuda:LOCAL_RANK``), its share of the machine's DataLoader workers (``auto``) and of its cores
    (torch threads: ``OMP_NUM_THREADS``, which :func:`launch` sets). An error in a
    rank is written where torchrun's report reads it; a :class:`UserError` is re-raised naming
    the rank, so the stage's one-line message says which rank failed.
    """
    runtime = resolve_runtime(params)
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield World(), runtime
        return
    world = World(*(int(os.environ[name]) for name in RANK_ENV))
    cuda = runtime.device.type == "cuda"
    cores = max(1, (os.cpu_count() or 1) // world.local_size)
    workers = auto_num_workers(cuda, cores) if params.num_workers == "auto" else runtime.num_workers
    if cuda:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        # NCCL for CUDA tensors; the features, activations and fine-tuned weights the stages
        # exchange are CPU tensors (train fits on the CPU), which gloo carries.
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        device = runtime.device
        dist.init_process_group("gloo")
    try:
        yield world, dataclasses.replace(runtime, device=device, num_workers=workers)
    except BaseException as err:
        _record(err)
        if isinstance(err, UserError):
            raise RankFailedError(f"rank {world.rank} of {world.size}: {err}") from err
        raise
    finally:
        dist.destroy_process_group()
