"""Process groups for multi-process work: setup, teardown, timeouts and rank failures.

The engine's distributed pieces (:class:`~ssr_engine.graph.partition.PartitionedOperator`,
DDP training) run one process per rank on ``torch.distributed``: gloo on the CPU, NCCL on
GPUs. This module holds what every such program needs around them:

* :func:`init_distributed` / :func:`shutdown_distributed` — join and leave the default
  process group, from explicit arguments or from the ``torchrun`` environment
  (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), with a
  finite timeout so that a dead or stalled peer ends every collective with an error
  instead of a hang;
* :func:`collective` — wraps the collectives of a step so a failure surfaces as one
  :class:`RankFailure` that names the rank and the step;
* :func:`run_local` — runs a function on ``world_size`` spawned processes of this machine
  (localhost rendezvous on a free port), joins them with a deadline and reports every
  failed rank; for tests and for trying distributed code on one machine.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_lib
import socket
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["RankFailure", "init_distributed", "shutdown_distributed", "collective",
           "free_port", "run_local"]

# Timeout (seconds) of the default group set by init_distributed, quoted in error messages.
_timeout_s: Optional[float] = None


class RankFailure(RuntimeError):
    """A collective failed on this rank, usually because a peer rank exited or stalled."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (for a localhost rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    return None if value in (None, "") else int(value)


def init_distributed(rank: Optional[int] = None, world_size: Optional[int] = None, *,
                     backend: str = "auto", master_addr: Optional[str] = None,
                     master_port: Optional[int] = None, timeout: float = 60.0) -> torch.device:
    """Join the default process group and return the device this rank should compute on.

    Arguments left as None are read from the ``torchrun`` environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); without it a single-process group on
    localhost is created. With NCCL the rank's GPU is ``LOCAL_RANK`` (else
    ``rank % device_count``) and ``TORCH_NCCL_BLOCKING_WAIT=1`` is set unless already set,
    so that a timed-out NCCL collective raises in Python instead of aborting the process.

    Args:
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes.
        backend: ``"auto"`` (NCCL when CUDA is available, else gloo), ``"gloo"`` or
            ``"nccl"``.
        master_addr: rendezvous host (default ``127.0.0.1``).
        master_port: rendezvous port; required when ``world_size > 1`` and ``MASTER_PORT``
            is unset.
        timeout: seconds any collective (and the rendezvous) may wait for a peer before it
            fails; a dead or stalled rank makes the others raise after at most this long.

    Returns:
        ``cuda:<local rank>`` under NCCL, ``cpu`` under gloo.

    Raises:
        ValueError: on a bad rank, world size, backend or timeout, or a missing port.
        RuntimeError: when a process group is already initialised.

    Example:
        >>> from ssr_engine.distributed import free_port, init_distributed, shutdown_distributed
        >>> init_distributed(0, 1, backend="gloo", master_port=free_port())
        device(type='cpu')
        >>> shutdown_distributed()
    """
    global _timeout_s
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised; call "
                           "shutdown_distributed() first")
    rank = rank if rank is not None else (_env_int("RANK") or 0)
    world_size = world_size if world_size is not None else (_env_int("WORLD_SIZE") or 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    if not (timeout > 0 and timeout < float("inf")):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    addr = master_addr or os.environ.get("MASTER_ADDR") or "127.0.0.1"
    port = master_port if master_port is not None else _env_int("MASTER_PORT")
    if port is None:
        if world_size > 1:
            raise ValueError("master_port is required for world_size > 1 (or set MASTER_PORT); "
                             "on one machine use ssr_engine.distributed.free_port() in the "
                             "launcher and pass it to every rank")
        port = free_port(addr)
    device = torch.device("cpu")
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        local = _env_int("LOCAL_RANK")
        device = torch.device("cuda", local if local is not None
                              else rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout))
    _timeout_s = float(timeout)
    return device


def shutdown_distributed() -> None:
    """Leave and destroy the default process group (no-op when there is none)."""
    global _timeout_s
    if dist.is_initialized():
        dist.destroy_process_group()
    _timeout_s = None


@contextmanager
def collective(what: str, group: Optional[dist.ProcessGroup] = None) -> Iterator[None]:
    """Turn a failing collective into a :class:`RankFailure` naming the rank and the step.

    Wrap only the ``torch.distributed`` calls (and ``work.wait()``), so that local errors
    keep their own type.

    Args:
        what: the step, e.g. ``"halo exchange"``; quoted in the message.
        group: the process group of the collectives (default: the default group).

    Raises:
        RankFailure: when a ``RuntimeError`` (connection closed, timeout, ...) escapes.
    """
    try:
        yield
    except RankFailure:
        raise
    except RuntimeError as e:
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        limit = f"{_timeout_s:g} s" if _timeout_s is not None else "the process-group timeout"
        raise RankFailure(
            f"rank {rank} of {size}: {what} failed; a peer rank has probably exited or "
            f"stalled for longer than the timeout ({limit}). Look at the other ranks' "
            f"output for the first error. Cause: {type(e).__name__}: {e}") from e


def _local_entry(fn: Callable, rank: int, world_size: int, port: int, backend: str,
                 timeout: float, args: tuple, results) -> None:
    # One spawned rank: join the group, run fn, report (rank, ok, payload) as pickled bytes.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        init_distributed(rank, world_size, backend=backend, master_port=port, timeout=timeout)
        payload = (rank, True, fn(rank, *args))
    except BaseException:
        payload = (rank, False, traceback.format_exc())
    finally:
        shutdown_distributed()
    # Plain pickle: tensors travel by value, not through shared memory that dies with us.
    results.put(pickle.dumps(payload))


def run_local(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (), *,
              backend: str = "gloo", timeout: float = 60.0,
              join_timeout: Optional[float] = None) -> List[Any]:
    """Run ``fn(rank, *args)`` on ``world_size`` spawned local processes, one per rank.

    Each process joins a localhost process group (free port, ``timeout`` per collective),
    uses ``cpu_count // world_size`` torch threads, runs ``fn`` and leaves the group. The
    launcher waits for every rank, so survivors of a failed rank end through their own
    collective timeouts, and raises one error that lists every failed rank.

    Args:
        fn: a picklable (module-level) function ``fn(rank, *args)``.
        world_size: number of processes.
        args: further arguments of ``fn`` (picklable).
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per rank).
        timeout: process-group timeout in seconds (see :func:`init_distributed`).
        join_timeout: seconds to wait for all ranks before terminating them (default: no
            limit).

    Returns:
        ``[world_size]`` list of the values returned by ``fn`` on each rank.

    Raises:
        RuntimeError: when a rank raised, exited without a result or outlived
            ``join_timeout``; the message holds each failed rank's traceback or exit code.

    Example:
        >>> from ssr_engine.distributed import run_local
        >>> run_local(max, 2, args=(1,), join_timeout=60.0)  # each rank returns max(rank, 1)
        [1, 1]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_local_entry, daemon=False,
                         args=(fn, r, world_size, port, backend, timeout, tuple(args), results))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = None if join_timeout is None else time.monotonic() + join_timeout
    reports, failures = {}, {}
    try:
        while len(reports) + len(failures) < world_size:
            try:
                rank, ok, payload = pickle.loads(results.get(timeout=0.1))
                reports[rank] = (ok, payload)
                continue
            except queue_lib.Empty:
                pass
            for r, p in enumerate(procs):
                if r in reports or r in failures or p.exitcode is None:
                    continue
                try:  # its report may still be in the pipe
                    rank, ok, payload = pickle.loads(results.get(timeout=1.0))
                    reports[rank] = (ok, payload)
                except queue_lib.Empty:
                    failures[r] = f"rank {r} exited with code {p.exitcode} without a result"
            if deadline is not None and time.monotonic() > deadline:
                for r in range(world_size):
                    if r not in reports and r not in failures:
                        failures[r] = f"rank {r} did not finish within {join_timeout:g} s"
                break
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
    for r, (ok, payload) in reports.items():
        if not ok:
            failures[r] = f"rank {r} raised:\n{payload}"
    if failures:
        text = "\n".join(failures[r] for r in sorted(failures))
        raise RuntimeError(f"{len(failures)} of {world_size} ranks failed:\n{text}")
    return [reports[r][1] for r in range(world_size)]
