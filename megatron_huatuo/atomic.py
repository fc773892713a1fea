"""Outputs that have one writer, appear complete or not at all, and fail with one line naming the path.

Why: a conversion or dataset build that is killed (pre-emption, OOM, a bad tensor found half-way) must not leave a
half-written directory that a rerun refuses ("not empty") or, worse, that a later job reads as finished. Work goes
into a hidden sibling (same filesystem, so the final ``os.replace`` is an atomic rename) that is removed on error;
leftovers of killed runs are removed by the next run.

- One writer: every command that writes an output holds its advisory lock (:mod:`megatron_huatuo.locking`) for the
  whole run (:func:`single_writer` on the command's function, :func:`atomic_directory` itself); a second writer gets
  :class:`~megatron_huatuo.locking.LockHeld` naming the holder instead of deleting the first one's work files.
- Replacing a directory takes two renames (``out`` -> ``.out.previous``, then the new one -> ``out``). A crash
  between them leaves only ``.out.previous``: the next writer puts it back before anything else (and a crash after
  the second rename leaves a complete new ``out``, so the old copy is then deleted). There is no moment at which
  both the old and the new output are lost.
- A full disk or quota (``ENOSPC``, ``EDQUOT``) inside a writer becomes :class:`DiskFull`, whose message is
  ``no space left on PATH``; the partial output is removed as for any other error.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

from megatron_huatuo.locking import LockHeld, exclusive_writer

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# numpy's ``tofile``/``np.save`` report a short write as ``OSError("N requested and M written")`` with no errno;
# a regular file takes fewer bytes than asked only when the disk or the quota is full.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and (exc.errno in DISK_FULL_ERRNOS or (
        exc.errno is None and bool(_SHORT_WRITE.match(str(exc)))))


class DiskFull(OSError):
    """No space (or quota) left while writing an output; ``str()`` is one line naming where."""

    def __init__(self, where: str | Path, cause: OSError):
        super().__init__(cause.errno or errno.ENOSPC, os.strerror(cause.errno or errno.ENOSPC))
        self.where = str(where)
        self.file = cause.filename

    def __str__(self) -> str:
        writing = f" (writing {self.file})" if self.file and str(self.file) != self.where else ""
        return f"no space left on {self.where}{writing}: free space or write elsewhere, then rerun"


def exit_code(exc: BaseException) -> int:
    """The exit status a CLI gives for an output failure: 2 when another writer holds the output, 1 otherwise."""
    return 2 if isinstance(exc, LockHeld) else 1


OUTPUT_ERRORS = (LockHeld, DiskFull)  # what a writing CLI turns into one line and exit_code(exc)


@contextlib.contextmanager
def output_writer(*targets: str | Path) -> Iterator[None]:
    """Hold the writer lock of every target for the block and name a full disk (``DiskFull``) after the first."""
    with contextlib.ExitStack() as stack:
        for target in targets:
            stack.enter_context(exclusive_writer(target))
        try:
            yield
        except DiskFull:
            raise
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(targets[0], exc) from exc
            raise


Targets = Union[str, Callable[[dict], Union[str, Path, Sequence[Union[str, Path]]]]]


def single_writer(targets: Targets):
    """Decorator: the call holds the output lock(s) (see :func:`output_writer`) from its first line to its return.

    ``targets`` is the name of the parameter holding the output path, or a function of the call's arguments (a
    dict, defaults applied) returning one path or several (``prepare-merge`` also locks every shard's output).
    """
    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            paths = bound.arguments[targets] if isinstance(targets, str) else targets(bound.arguments)
            paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
            with output_writer(*paths):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def _partials(out: Path):
    return out.parent.glob(f".{out.name}.partial-*")


def _previous(out: Path) -> Path:
    return out.parent / f".{out.name}.previous"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened or synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover(out: str | Path) -> None:
    """Finish or undo a replacement of ``out`` that a crash interrupted (call with the writer lock held).

    ``.out.previous`` (or ``.out.partial-old-*`` of older versions) without ``out``: the crash came between the two
    renames, so the previous output is put back. With a complete ``out`` beside it: the crash came after the swap,
    so the old copy is deleted.
    """
    out = Path(out)
    for old in [_previous(out), *sorted(out.parent.glob(f".{out.name}.partial-old-*"))]:
        if not old.is_dir():
            continue
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty directory made after the crash holds nothing to keep
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, out)
            _fsync_dir(out.parent)


@contextlib.contextmanager
def atomic_directory(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block succeeds; holds ``out``'s writer lock.

    ``out`` must be absent or an empty directory, unless ``replace`` (then an existing ``out`` is swapped out only
    after the new one is complete).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_writer(out):
        recover(out)
        if out.exists() and not replace and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"output directory {out} is not empty")
        for stale in _partials(out):  # leftovers of killed runs (no live writer: we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if out.is_dir() and any(out.iterdir()):
            old = _previous(out)
            os.replace(out, old)  # a crash from here until the next rename: recover() puts ``old`` back
            os.replace(tmp, out)
            _fsync_dir(out.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
            _fsync_dir(out.parent)


class AtomicFiles:
    """Text files that appear complete or not at all, together.

    Each is written as a hidden ``.<name>.partial`` beside its final path; ``commit`` flushes them to disk and renames
    them into place, ``abort`` deletes them. As a context manager it commits when the block succeeds and aborts when it
    raises, so a killed or failed job never leaves a truncated output where a rerun or the next stage would read it.
    The paths are renamed in the order given: a marker file named last appears only once the others are in place.
    ``binary=True`` opens every file in binary mode (numpy arrays, ``ndarray.tofile``).
    """

    def __init__(self, *paths: str | Path, binary: bool = False):
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.files = [open(self.partial(p), "wb") if binary else open(self.partial(p), "w", encoding="utf-8")
                      for p in self.paths]

    @staticmethod
    def partial(path: Path) -> Path:
        return path.with_name(f".{path.name}.partial")

    def commit(self) -> None:
        for f in self.files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for p in self.paths:
            os.replace(self.partial(p), p)

    def abort(self) -> None:
        for f in self.files:
            f.close()
        for p in self.paths:
            self.partial(p).unlink(missing_ok=True)

    def __enter__(self):
        return self.files

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
