"""Checkpoints: written atomically, refused when they come from another configuration.

A checkpoint is one ``torch.save`` file holding the model and optimiser states, the RNG
states (torch, the sampler's numpy generator), the completed epoch, the early-stopping
state and the run's configuration. It is written with :func:`atomic_write` — to a temporary
file in the same folder, synced and moved into place with ``os.replace`` — so an interrupted
write never leaves a torn file (the band store's ``meta.json`` and the pipeline's
``metrics.json`` are written the same way). A process killed outright (SIGKILL) cannot remove
its temporary file; :func:`remove_leftovers` clears such files when the next run starts.

Checkpoints are read back with ``torch.load(..., weights_only=True)`` only
(:func:`read_checkpoint`): they hold tensors and plain Python values (the numpy RNG state is
saved as a tensor and plain numbers), so a file received from someone else cannot run code
when it is loaded — a file that needs more than that is refused, not unpickled.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import pickle
import signal
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "config_diff",
           "atomic_write", "remove_leftovers", "check_finished"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def out_folder(path: PathLike) -> Iterator[Path]:
    """Make a run's output folder (and its missing parents) for the ``with`` block; when the
    block fails, remove the folders it made that are still empty, so that a refused run
    leaves nothing behind. A folder that existed before is never removed.

    Example:
        >>> import tempfile
        >>> base = Path(tempfile.mkdtemp())
        >>> try:
        ...     with out_folder(base / "a" / "run"):
        ...         raise ValueError("refused")
        ... except ValueError:
        ...     pass
        >>> (base / "a").exists()
        False
    """
    path = Path(path)
    made = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        made.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for d in made:                          # deepest first; stop at the first kept one
            try:
                d.rmdir()
            except OSError:
                break
        raise


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
            # mkstemp creates 0600; give the file what open() would under the user's umask
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _umask() -> int:
    # the process umask (reading it means setting it; set it straight back)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    try:
        with atomic_write(path, "wb") as fh:
            torch.save(state, fh)
    except RuntimeError as e:
        # torch's archive writer reports a failed write (disk full, I/O error) as
        # "[enforce fail at inline_container.cc]"; the OSError behind it says what happened.
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was kept"
        what = "no space left on the device" if cause.errno == errno.ENOSPC else str(cause)
        raise OSError(cause.errno, f"cannot write the checkpoint {path}: {what}; {kept}") \
            from e
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


def read_checkpoint(path: PathLike, mmap: bool = False) -> Dict[str, Any]:
    """Read a checkpoint file safely: ``torch.load(weights_only=True)``, which rebuilds
    tensors and plain Python values only and never runs code from the file.

    Args:
        path: the ``checkpoint.pt``.
        mmap: memory-map the tensors (cheap when only the configuration is needed).

    Returns:
        the saved dict.

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: naming the file and the problem, when it is empty, truncated or not a
            ``torch.save`` file, or when it holds Python objects beyond tensors and plain
            values (refused, since unpickling them can execute arbitrary code).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> _ = p.write_bytes(b"")
        >>> read_checkpoint(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint ... is empty (a write that never finished?); ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"there is no checkpoint file {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"the checkpoint {path} is empty (a write that never finished?); "
                         "delete it or start over with --fresh")
    if not zipfile.is_zipfile(path):            # torch.save writes a zip archive
        raise ValueError(f"the checkpoint {path} is damaged or not a checkpoint: it is not a "
                         "complete torch.save archive (truncated?); delete it or start over "
                         "with --fresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ValueError(
                f"refused to load {path}: it holds Python objects beyond tensors and plain "
                "values, and unpickling those can run arbitrary code. ssr_engine writes no "
                "such checkpoints since 2026-12-06 (older ones held numpy RNG objects): "
                "if the file is an older run of yours, start over with --fresh; otherwise "
                "it was replaced") from None
        raise ValueError(f"the checkpoint {path} is damaged ({e}); delete it or start over "
                         "with --fresh") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"the checkpoint {path} is damaged: truncated or not a checkpoint "
                         f"({type(e).__name__}: {first}); delete it or start over with "
                         "--fresh") from None
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{path} is not a checkpoint written by ssr_engine.train")
    return state


def load_checkpoint(path: PathLike, config: Dict[str, Any]) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` for the same configuration.

    Args:
        path: checkpoint file.
        config: the current run's configuration; it must equal the saved one.

    Returns:
        The saved state dict.

    Raises:
        ValueError: when the checkpoint was written by a different configuration (the
            differing keys are listed), is damaged, or is not a checkpoint of this harness
            (:func:`read_checkpoint`).
    """
    path = Path(path)
    state = read_checkpoint(path)
    diff = config_diff(state["config"], config)
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} was written by a different configuration "
                         f"({lines}); resume with the same settings, start over with "
                         "--fresh (Trainer(fresh=True)), or choose another output folder")
    return state


def check_finished(folder: PathLike, report: Dict[str, Any]) -> Dict[str, Any]:
    """Check that the checkpoint in a run's ``folder`` is the one its ``report``
    (``metrics.json``) describes: the same completed epochs and best epoch. A later run in the
    folder that did not finish (an interrupted ``--fresh`` one, say) replaces the checkpoint
    first and the report only at its end, so the two then disagree.

    Returns:
        the checkpoint's contents (read with ``mmap``: tensors stay on disk until used).

    Raises:
        ValueError: when the checkpoint is missing, cannot be read, or disagrees.
    """
    folder = Path(folder)
    path = folder / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"{folder}: no checkpoint.pt beside its metrics.json, so the report "
                         "cannot be checked against the run")
    try:
        state = read_checkpoint(path, mmap=True)
    except ValueError as e:
        raise ValueError(f"{folder}: its checkpoint cannot be read: "
                         f"{str(e).split(';')[0]}") from e
    best = state.get("best") if isinstance(state.get("best"), dict) else {}
    if (state.get("epoch"), best.get("epoch")) != (report.get("epochs_run"),
                                                  report.get("best_epoch")):
        raise ValueError(f"{folder}: its checkpoint is not the one its metrics.json reports "
                         f"(epoch {state.get('epoch')}, best {best.get('epoch')} against "
                         f"{report.get('epochs_run')}, best {report.get('best_epoch')}): a "
                         "later run in that folder did not finish; finish it with --resume "
                         "(and the options it was started with) first")
    return state
