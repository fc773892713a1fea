"""Output directories (``atomic_directory``) and sets of files (``AtomicFiles``) that appear complete or not at all.

Why: a conversion or dataset build that is killed (pre-emption, OOM, a bad tensor found half-way) must not leave a
half-written directory that a rerun refuses ("not empty") or, worse, that a later job reads as finished. Work goes
into a hidden sibling (same filesystem, so the final ``os.replace`` is an atomic rename) that is removed on error;
leftovers of killed runs are removed by the next run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def _partials(out: Path):
    return out.parent.glob(f".{out.name}.partial-*")


@contextlib.contextmanager
def atomic_directory(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block succeeds.

    ``out`` must be absent or an empty directory, unless ``replace`` (then an existing ``out`` is swapped out only
    after the new one is complete).
    """
    out = Path(out)
    if out.exists() and not replace and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output directory {out} is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in _partials(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.is_dir() and any(out.iterdir()):
        old = out.parent / f".{out.name}.partial-old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)


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
