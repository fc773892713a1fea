"""One writer per output (megatron_huatuo/locking.py): a second writer is refused naming the holder, a dead
holder's lock is taken over, in both the flock mode and the exclusive-file fallback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from megatron_huatuo.locking import LockHeld, WriterLock, exclusive_writer, lock_path

HOLD = textwrap.dedent("""
    import sys, time
    from megatron_huatuo.locking import WriterLock
    WriterLock(sys.argv[1], sys.argv[2]).acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def _holder(target, mode):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("mode", ["flock", "file"])
def test_second_writer_is_refused_naming_the_holder_then_takes_over_after_kill_9(tmp_path, mode):
    target = tmp_path / "ckpt"
    proc = _holder(target, mode)
    try:
        with pytest.raises(LockHeld) as err:
            WriterLock(target, mode).acquire()
        message = str(err.value)
        assert f"pid {proc.pid}" in message and socket.gethostname() in message and str(target) in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with exclusive_writer(target, mode) as lock:  # the dead holder's lock is taken over
        assert lock.held
        with pytest.raises(LockHeld):
            WriterLock(target, mode).acquire()
    assert not lock_path(target).exists()  # released locks leave no file behind


def test_release_then_relock_and_waiter_on_an_unlinked_inode(tmp_path):
    target = tmp_path / "out"
    first = WriterLock(target).acquire()
    stale_fd = os.open(lock_path(target), os.O_RDWR)  # a waiter that opened the file before the holder let go
    first.release()
    second = WriterLock(target).acquire()  # a fresh file, not the unlinked inode the waiter holds open
    assert os.fstat(stale_fd).st_ino != os.stat(lock_path(target)).st_ino
    os.close(stale_fd)
    second.release()


def test_a_foreign_host_holder_is_not_taken_over_in_file_mode(tmp_path):
    target = tmp_path / "out"
    lock_path(target).write_text('{"host": "node-that-is-not-here", "pid": 1, "started": "x"}')
    with pytest.raises(LockHeld, match="another host"):
        WriterLock(target, "file").acquire()
