"""How many torch threads a run's work gets: a fixed number, or the cores idle right now.

On a quiet 2-core machine two threads make every phase of a large run faster (synthetic
200k users / 100k items / 4M interactions, 2026-12-06: band precompute 82 → 46 s, a training
step 97 → 68 ms, evaluation 10.2 → 5.5 s). Where other processes keep the cores busy, a
second OpenMP thread waits for a core instead, and a step took 1.5–2 s with two threads
against 0.22 s with one. Taking a busy core costs far more than leaving an idle one, so
``"auto"`` counts busy cores generously:

* it looks at the other processes' runnable tasks (Linux ``/proc/stat`` ``procs_running``
  less this process's own running threads) at most every 0.25 s while training, and sets
  the thread count every 5 s from the mean over that window, a process counting as a busy
  core once it was seen running in a quarter of the looks (a job that sleeps or waits now
  and then still counts);
* at the start of a phase (band precompute, an evaluation) it looks five times, 10 ms apart;
* the usable cores are the CPU affinity, capped by a cgroup CPU quota (v2 ``cpu.max`` of
  this process's cgroup and its parents, or v1 ``cpu.cfs_quota_us``).

Where ``/proc/stat`` counts the tasks of a whole host (a container without its own
``/proc``), the count sees the host's jobs and ``"auto"`` stays at few threads; outside
Linux it is one thread. A fixed ``threads`` is never changed.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

__all__ = ["idle_cores", "ThreadPolicy"]

RECHECK_S = 5.0           # seconds between thread counts while training
LOOK_S = 0.25             # seconds between looks at the other processes while training
BUSY_SHARE = 0.25         # a process seen running in this share of the looks holds a core
_QUICK_LOOKS, _GAP_S = 5, 0.01

# where the counts come from (module constants, so that tests can point them at fake files)
PROC_STAT = Path("/proc/stat")
OWN_TASKS = Path("/proc/self/task")
OWN_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_v2(rel: str) -> Optional[float]:
    """The smallest ``cpu.max`` quota (in cores) of the cgroup ``rel`` and its parents."""
    best = None
    path = CGROUP_ROOT / rel.lstrip("/")
    while True:
        try:
            quota, period = (path / "cpu.max").read_text().split()[:2]
            if quota != "max":
                q = int(quota) / int(period)
                best = q if best is None else min(best, q)
        except (OSError, ValueError):
            pass
        if path == CGROUP_ROOT or CGROUP_ROOT not in path.parents:
            return best
        path = path.parent


def _quota_v1() -> Optional[float]:
    for d in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota = int((CGROUP_ROOT / d / "cpu.cfs_quota_us").read_text())
            period = int((CGROUP_ROOT / d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def _usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    rel = "/"
    try:
        for line in OWN_CGROUP.read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:] or "/"
    except OSError:
        pass
    quotas = [q for q in (_quota_v2(rel), _quota_v1()) if q is not None]
    if quotas:
        n = min(n, max(1, int(min(quotas))))
    return max(1, n)


def _running_others() -> Optional[int]:
    """Runnable tasks of other processes now: ``procs_running`` of ``/proc/stat`` less this
    process's own running threads; ``None`` where that cannot be read."""
    try:
        with open(PROC_STAT) as fh:
            total = next(int(line.split()[1]) for line in fh
                         if line.startswith("procs_running"))
        own = 0
        for task in os.scandir(OWN_TASKS):
            try:
                stat = Path(task.path, "stat").read_text()
            except OSError:                       # the thread ended meanwhile
                continue
            # "tid (comm) S ...": comm may hold spaces and ')', the state follows the last ')'
            own += stat[stat.rindex(")") + 2] == "R"
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return max(0, total - own)


def _threads_for(looks: List[int], cores: int) -> int:
    """Threads for ``cores`` usable cores given looks at the other runnable tasks: the mean
    over the looks, a fraction counting as a busy core from :data:`BUSY_SHARE` on."""
    busy = math.ceil(sum(looks) / len(looks) - BUSY_SHARE + 1e-9)
    return max(1, min(cores, cores - max(0, busy)))


def idle_cores(cores: Optional[int] = None) -> int:
    """Cores that other processes leave idle now (at least 1): five looks 10 ms apart
    (module docstring); 1 where the count cannot be read (not Linux).

    Args:
        cores: the usable cores (default: read from the affinity and cgroup quotas).

    Example:
        >>> 1 <= idle_cores() <= (os.cpu_count() or 1)
        True
    """
    looks = []
    for i in range(_QUICK_LOOKS):
        if i:
            time.sleep(_GAP_S)
        n = _running_others()
        if n is None:
            return 1
        looks.append(n)
    return _threads_for(looks, _usable_cores() if cores is None else cores)


class ThreadPolicy:
    """Sets ``torch.set_num_threads`` for a run (one process; a distributed run should fix
    the threads of each process, as ``train_large.py --distributed`` does).

    Args:
        threads: a number of threads (set once), ``"auto"`` (the idle cores, module
            docstring) or ``None`` (leave torch's setting alone).
        recheck: seconds between thread counts under ``"auto"``.

    Attributes:
        seconds: seconds spent at each thread count since the first :meth:`apply`
            (``{threads: seconds}``; see :meth:`usage`).

    Raises:
        ValueError: for anything else than a positive int, ``"auto"`` or ``None``, or a
            ``recheck`` that is not a positive number.

    Example:
        >>> ThreadPolicy(None).apply() == torch.get_num_threads()
        True
    """

    def __init__(self, threads: Union[int, str, None] = "auto", recheck: float = RECHECK_S):
        ok = threads is None or threads == "auto" or (
            isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1)
        if not ok:
            raise ValueError(f"threads must be a positive int, 'auto' or None, got {threads!r}")
        if not (isinstance(recheck, (int, float)) and math.isfinite(recheck) and recheck > 0):
            raise ValueError(f"recheck must be a positive number of seconds, got {recheck!r}")
        self.threads, self.recheck = threads, float(recheck)
        self._cores = _usable_cores() if threads == "auto" else None
        self._looks: List[int] = []
        self._last_count = self._last_look = -math.inf
        self._since: Optional[float] = None
        self.seconds: Dict[int, float] = {}

    def _set(self, n: int) -> int:
        now = time.monotonic()
        cur = torch.get_num_threads()
        if self._since is not None:
            self.seconds[cur] = self.seconds.get(cur, 0.0) + now - self._since
        self._since = now
        if cur != n:
            torch.set_num_threads(n)
        return n

    def apply(self, force: bool = False) -> int:
        """Set the thread count (under ``"auto"``: every ``recheck`` seconds from the looks
        of that window, or from five quick looks when ``force``d or when the window has too
        few); returns torch's thread count."""
        if self.threads is None:
            return torch.get_num_threads()
        if self.threads != "auto":
            return self._set(self.threads) if force or self._since is None \
                else torch.get_num_threads()
        now = time.monotonic()
        if now - self._last_look >= LOOK_S:
            n = _running_others()
            if n is not None:
                self._looks.append(n)
            self._last_look = now
        if not force and now - self._last_count < self.recheck:
            return torch.get_num_threads()
        n = _threads_for(self._looks, self._cores) \
            if not force and len(self._looks) >= _QUICK_LOOKS else idle_cores(self._cores)
        self._looks, self._last_count = [], now
        return self._set(n)

    def usage(self) -> Dict[str, float]:
        """Seconds at each thread count so far, for a run's report: ``{"1": s, "2": s}``."""
        if self._since is not None:
            self._set(torch.get_num_threads())
        return {str(k): round(v, 1) for k, v in sorted(self.seconds.items())}

    def describe(self) -> str:
        """One line for a run's log."""
        if self.threads is None:
            return f"{torch.get_num_threads()} torch threads"
        if self.threads == "auto":
            return (f"torch threads: the idle cores, counted every {self.recheck:g} s "
                    f"({torch.get_num_threads()} of {self._cores} at the last count)")
        return f"{self.threads} torch threads"
