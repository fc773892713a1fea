"""One writer per output: an advisory lock beside what a job writes (a checkpoint directory, a dataset, a conversion).

Why: two trainers on one ``checkpoint.dir`` both run and interleave their saves; two dataset builds into one output
race on the same temporary files. With :func:`exclusive_writer` the second job stops at once with
:class:`LockHeld`, whose message names the holder (host, pid, Slurm job, command), and the CLIs turn it into
``exit 2``.

Mechanism: ``fcntl.flock`` on a hidden lock file ``.<name>.lock`` beside the target. The kernel (or, on a shared
filesystem, its lock manager: NFSv4 leases, Lustre with ``-o flock``) releases the lock when the holding process
dies, even after ``kill -9``, so a stale lock of a dead process is simply taken over by the next writer; the holder
record written into the file only serves the refusal message. Where the filesystem refuses ``flock`` (``ENOLCK``,
``EOPNOTSUPP``), the lock is the file's existence (``O_EXCL``); a holder on this host that no longer runs is then
detected by its pid and taken over, and a holder on another host is refused with the path to remove by hand once
that job is known to be gone.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(RuntimeError):
    """Another live process writes the same target; ``holder`` is its record (host, pid, started, ...)."""

    def __init__(self, target: Path, lock: Path, holder: dict, hint: str = ""):
        self.target, self.lock, self.holder = target, lock, holder
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        if holder.get("slurm_job_id"):
            who += f" (Slurm job {holder['slurm_job_id']})"
        if holder.get("started"):
            who += f" since {holder['started']}"
        if holder.get("command"):
            who += f", running: {holder['command']}"
        super().__init__(f"{target} is being written by another process: {who}; lock file {lock}{hint}")


def lock_path(target: str | Path) -> Path:
    """``<parent>/.<name>.lock``: beside the target, so the target itself may be absent or replaced atomically."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _holder_record() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "command": " ".join(sys.argv[:6])[:300],
    }


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WriterLock:
    """The lock on one target; :meth:`acquire` raises :class:`LockHeld`, :meth:`release` is idempotent.

    ``mode``: ``"auto"`` (flock, falling back to an exclusive file where flock is unsupported), ``"flock"`` or
    ``"file"`` (the fallback alone; for filesystems known to lack flock, and for tests).
    """

    def __init__(self, target: str | Path, mode: str = "auto"):
        if mode not in ("auto", "flock", "file"):
            raise ValueError(f"lock mode must be auto, flock or file, got {mode!r}")
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.mode = mode
        self._fd: Optional[int] = None
        self._kind: Optional[str] = None

    @property
    def held(self) -> bool:
        return self._kind is not None

    def acquire(self) -> "WriterLock":
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.mode != "file":
            try:
                self._acquire_flock()
                return self
            except OSError as exc:
                if exc.errno not in _NO_FLOCK or self.mode == "flock":
                    raise
        self._acquire_file()
        return self

    def _acquire_flock(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(self.target, self.path, _read_holder(self.path)) from None
            except BaseException:
                os.close(fd)
                raise
            # A releasing holder unlinks the file after we opened it: our lock would then be on a dead inode.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder_record()).encode())
        os.fsync(fd)
        self._fd, self._kind = fd, "flock"

    def _acquire_file(self) -> None:
        record = json.dumps(_holder_record()).encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path)
                same_host = holder.get("host") == socket.gethostname()
                pid = holder.get("pid")
                if same_host and isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
                    # Stale: move it aside under a unique name; of two racing takers only one O_EXCL then wins.
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(self.path, self.path.with_name(f"{self.path.name}.stale-{os.getpid()}"))
                        os.unlink(self.path.with_name(f"{self.path.name}.stale-{os.getpid()}"))
                    continue
                hint = "" if same_host else " (another host: remove the lock file once that job is known to be gone)"
                raise LockHeld(self.target, self.path, holder, hint) from None
            try:
                os.write(fd, record)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._kind = "file"
            return
        raise LockHeld(self.target, self.path, _read_holder(self.path))

    def release(self) -> None:
        if self._kind == "flock" and self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # before unlocking: a waiter that opened the old inode re-checks and retries
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        elif self._kind == "file":
            with contextlib.suppress(FileNotFoundError):
                if _read_holder(self.path).get("pid") == os.getpid():
                    os.unlink(self.path)
        self._fd, self._kind = None, None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict = {}  # resolved target -> (pid, WriterLock) held through exclusive_writer by this process


@contextlib.contextmanager
def exclusive_writer(target: str | Path, mode: str = "auto") -> Iterator[WriterLock]:
    """Hold the writer lock of ``target`` for the block; :class:`LockHeld` if another live process holds it.

    Re-entrant within a process: a command that holds the lock of its output can call a function that takes the
    same lock (``prepare`` runs its merge; ``import`` writes through ``atomic_directory``) without refusing itself.
    """
    key = Path(target).resolve()
    held = _HELD.get(key)
    if held is not None and held[0] == os.getpid() and held[1].held:
        yield held[1]
        return
    lock = WriterLock(target, mode)
    with lock:
        _HELD[key] = (os.getpid(), lock)
        try:
            yield lock
        finally:
            _HELD.pop(key, None)
