"""Running the other stages' real CLIs as subprocesses, with their output visible and logged."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path


class StageCommandError(RuntimeError):
    """A stage's command failed; the message names the command, its exit code and its log file."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_module(module: str, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def torchrun(nproc: int, module: str, *args: str | Path) -> list[str]:
    """``torchrun`` on this machine only, on a free port (two demos or tests never collide)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", module, *map(str, args)]


def run_command(cmd: list[str], log_file: Path, *, cwd: Path | None = None, env: dict | None = None,
                echo: bool = True, prefix: str = "    | ") -> None:
    """Run ``cmd``, streaming its combined output (indented) and appending it to ``log_file``.

    Raises :class:`StageCommandError` with the last lines of output when the command fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update(env or {})
    # The demo's children import this checkout's packages even when the project is not pip-installed.
    repo = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = repo + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    tail: deque[str] = deque(maxlen=30)
    t0 = time.perf_counter()
    with log_file.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, encoding="utf-8", errors="replace", bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                if echo:
                    print(prefix + line.rstrip("\n"), flush=True)
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        log.write(f"# exit {rc} after {time.perf_counter() - t0:.1f}s\n")
    if rc != 0:
        last = "\n".join(tail)
        raise StageCommandError(f"command failed with exit code {rc}: {' '.join(cmd)}\nlog: {log_file}\n{last}")
