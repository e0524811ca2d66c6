"""Checkpoints: written atomically, refused when they come from another configuration.

A checkpoint is one ``torch.save`` file holding the model and optimiser states, the RNG
states (torch, the sampler's numpy generator), the completed epoch, the early-stopping
state and the run's configuration. It is written with :func:`atomic_write` — to a temporary
file in the same folder, synced and moved into place with ``os.replace`` — so an interrupted
write never leaves a torn file (the band store's ``meta.json`` and the pipeline's
``metrics.json`` are written the same way). A process killed outright (SIGKILL) cannot remove
its temporary file; :func:`remove_leftovers` clears such files when the next run starts.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "config_diff", "atomic_write",
           "remove_leftovers"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` that replaces ``path`` only when the block ends
    without an exception (after a flush and ``fsync``); otherwise the temporary file is
    removed and ``path`` is left as it was.

    SIGTERM, whose default action would kill the process with the temporary file still on
    disk, raises ``SystemExit(143)`` while the block runs in the main thread, the way SIGINT
    raises ``KeyboardInterrupt``; a handler the caller installed (the stored trainer's
    graceful stop) is left in place.

    Args:
        path: the file to write; its folder must exist.
        mode: ``"wb"`` (binary) or ``"w"`` (text).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_write(p, "w") as fh:
        ...     _ = fh.write("done")
        >>> p.read_text()
        'done'
    """
    path = Path(path)
    tmp = None
    with _sigterm_raises():
        try:
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``SystemExit(143)`` inside the block, where it still has its default
    action and this is the main thread (only that thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        print(f"[ssr] {signal.Signals(signum).name} while writing a file: stopping",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def remove_leftovers(*paths: PathLike) -> int:
    """Remove the temporary files that :func:`atomic_write` calls for each of ``paths`` left
    behind in processes killed before they could clean up (SIGKILL, a power cut).

    Only one process may write a path at a time, so call this where no write of them is in
    flight (the pipelines do it when a run starts).

    Returns:
        how many files were removed.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "checkpoint.pt.k3x9q1.tmp").write_bytes(b"torn")
        >>> remove_leftovers(d / "checkpoint.pt")
        1
    """
    removed = 0
    for path in map(Path, paths):
        for p in path.parent.glob(glob.escape(path.name) + ".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    return removed


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`atomic_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)
    return path


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.loads(json.dumps(v))  # tuples -> lists, like a saved config
    return out


def config_diff(saved: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, tuple]:
    """Keys whose values differ between two (nested) configs: ``{key: (saved, current)}``."""
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")}


def load_checkpoint(path: PathLike, config: Dict[str, Any]) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` for the same configuration.

    Args:
        path: checkpoint file.
        config: the current run's configuration; it must equal the saved one.

    Returns:
        The saved state dict.

    Raises:
        ValueError: when the checkpoint was written by a different configuration (the
            differing keys are listed) or is not a checkpoint of this harness.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not a checkpoint written by ssr_engine.train")
    diff = config_diff(state["config"], config)
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} was written by a different configuration "
                         f"({lines}); resume with the same settings, or delete the file / "
                         "choose another output folder to start afresh")
    return state
