"""Outputs (megatron_huatuo/atomic.py): a crash between the two renames of a directory replacement loses nothing,
every writing command refuses a second writer naming the holder, a full disk is one line naming the path."""
from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_huatuo.atomic import DiskFull, atomic_directory, output_writer, recover, single_writer
from megatron_huatuo.locking import LockHeld, WriterLock, lock_path

REPLACE_AND_CRASH = textwrap.dedent("""
    import os, sys
    from megatron_huatuo.atomic import atomic_directory
    out, crash_after = sys.argv[1], int(sys.argv[2])
    real, calls = os.replace, []
    def replace(a, b):  # the process dies right after rename number `crash_after` (no cleanup runs: a crash)
        real(a, b)
        calls.append(b)
        if len(calls) == crash_after:
            os._exit(9)
    os.replace = replace
    with atomic_directory(out, replace=True) as tmp:
        (tmp / "model.txt").write_text("new")
""")


def _write_old(out: Path) -> None:
    out.mkdir()
    (out / "model.txt").write_text("old")


@pytest.mark.parametrize("crash_after, survivor", [(1, "old"), (2, "new")],
                         ids=["between-the-renames", "after-the-swap"])
def test_a_crash_during_replace_never_loses_both_outputs(tmp_path, crash_after, survivor):
    out = tmp_path / "ds"
    _write_old(out)
    proc = subprocess.run([sys.executable, "-c", REPLACE_AND_CRASH, str(out), str(crash_after)])
    assert proc.returncode == 9
    previous = tmp_path / ".ds.previous"
    assert previous.is_dir()  # the old output still exists somewhere at the moment of the crash
    assert out.is_dir() == (crash_after == 2)
    # The next writer first puts things right: the old output back (crash between the renames) or the complete new
    # one kept and the old copy dropped; its own failure then changes nothing.
    with pytest.raises(RuntimeError, match="later failure"):
        with atomic_directory(out, replace=True) as tmp:
            (tmp / "model.txt").write_text("half")
            raise RuntimeError("later failure")
    assert (out / "model.txt").read_text() == survivor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .previous, .partial-*, lock file left


def test_recover_handles_the_older_partial_old_name_and_a_fresh_empty_directory(tmp_path):
    out = tmp_path / "ds"
    old = tmp_path / ".ds.partial-old-1234"  # what the previous version of atomic.py left between its renames
    _write_old(old)
    out.mkdir()  # someone made an empty directory after the crash
    recover(out)
    assert (out / "model.txt").read_text() == "old" and not old.exists()


HOLD = textwrap.dedent("""
    import sys, time
    from megatron_huatuo.atomic import output_writer
    with output_writer(*sys.argv[1:]):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture()
def holder():
    """Start a process that holds the writer locks of the given targets (as a running writer does)."""
    procs = []

    def start(*targets):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, targets)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _commands(tmp):
    """(name, CLI main, argv, what the holder locks): every command that writes an output or a file set. The
    inputs need not exist: the lock is taken before anything is read."""
    from checkpoints_tools.cli import main as ckpt_main
    from preprocessing.cli import main as pre_main
    from preprocessing.dataset.cli import main as ds_main

    out = tmp / "out"
    return [
        ("prepare", pre_main, ["prepare", "--sources", str(tmp / "s.yaml"), "--out", str(out), "--quiet"], out),
        ("prepare-shard", pre_main, ["prepare", "--sources", str(tmp / "s.yaml"), "--out", str(out), "--shard", "1/2",
                                     "--quiet"], out / "shards" / "shard-00001-of-00002"),
        # a merge waits for no one: it is refused while a shard is still being written
        ("prepare-merge", pre_main, ["prepare-merge", "--out", str(out), "--shards", "2", "--quiet"],
         out / "shards" / "shard-00001-of-00002"),
        ("rewrite", pre_main, ["rewrite", "--docs", str(tmp / "d.jsonl"), "--out", str(out), "--base-url",
                               "http://127.0.0.1:9/v1"], out),
        ("rewrite-merge", pre_main, ["rewrite-merge", "--out", str(out), "--shards", "2"], out),
        ("dataset-build", ds_main, ["build", "--pairs", str(tmp / "p.jsonl"), "--tokenizer", str(tmp / "tok"),
                                    "--seq-length", "64", "--out", str(out)], out),
        ("dataset-tokenize", ds_main, ["tokenize", "--input", str(tmp / "p.jsonl"), "--tokenizer", str(tmp / "tok"),
                                       "--output-prefix", str(out)], out),
        ("import", ckpt_main, ["import", "--hf", str(tmp / "hf"), "--arch", "tiny-baichuan2-7b", "--out", str(out)],
         out),
        ("export", ckpt_main, ["export", "--ckpt", str(tmp / "ckpt"), "--arch", "tiny-baichuan2-7b", "--out",
                               str(out)], out),
    ]


@pytest.mark.parametrize("name", ["prepare", "prepare-shard", "prepare-merge", "rewrite", "rewrite-merge",
                                  "dataset-build", "dataset-tokenize", "import", "export"])
def test_every_writing_command_refuses_a_second_writer_naming_it(tmp_path, holder, capsys, name):
    _, main, argv, target = next(c for c in _commands(tmp_path) if c[0] == name)
    proc = holder(target)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pid {proc.pid}" in err and str(target) in err, err
    assert not (tmp_path / "out").exists() or name in ("prepare-shard", "prepare-merge")


def test_shards_of_one_array_write_side_by_side_but_not_twice(tmp_path, holder):
    from preprocessing.sharding import Shard, merge_targets, writer_target

    out = tmp_path / "out"
    holder(writer_target(out, Shard(0, 2)))
    with output_writer(writer_target(out, Shard(1, 2))):  # another shard of the same array: fine
        pass
    with pytest.raises(LockHeld):
        with output_writer(*merge_targets(out, 2)):  # the merge waits for shard 0
            pass


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
    calls = []

    @single_writer("out")
    def outer(out):
        inner(out)

    @single_writer(lambda a: a["out"])
    def inner(out):
        calls.append(out)
        with pytest.raises(LockHeld):  # another process (here: a fresh lock) is still refused
            WriterLock(out).acquire()

    outer(tmp_path / "x")
    assert calls and not lock_path(tmp_path / "x").exists()


def test_a_full_disk_becomes_one_line_naming_the_output(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DiskFull) as err:
        with atomic_directory(out) as tmp:
            (tmp / "web.bin").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value).startswith(f"no space left on {out}") and "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".ds.partial-*"))  # the partial output was removed
    with pytest.raises(DiskFull, match="no space left on"):  # numpy's short write carries no errno
        with output_writer(out):
            raise OSError("100000 requested and 8192 written")
    with pytest.raises(OSError, match="other"):  # any other error passes through unchanged
        with output_writer(out):
            raise OSError(errno.EIO, "other")

