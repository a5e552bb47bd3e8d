"""Subprocesses of a benchmark run, free ports, and what /proc says about a process."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
# Where subprocesses run: a snapshot of the source tree taken when the run starts (see
# `snapshot_source`), so edits made while a run is going do not change what it measures.
_workdir = ROOT


def workdir() -> Path:
    return _workdir


def snapshot_source(target: Path) -> Path:
    """Copy the project's source (not .venv, .git, var or caches) to `target`; run there."""
    global _workdir
    shutil.copytree(
        ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "var", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache",
            ".pytest_cache", "artifacts", "node_modules", "*.egg-info", "test-results",
        ),
    )  # fmt: skip
    _workdir = target
    return target


def reset_workdir() -> None:
    global _workdir
    _workdir = ROOT


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """Every subprocess of the run, so all of them end however the run ends."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        log: Path | None = None,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        handle = log.open("ab") if log is not None else None
        out: IO[bytes] | int = handle if handle is not None else subprocess.DEVNULL
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                args,
                cwd=_workdir,
                env=env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out,
                stderr=out,
                # Its own session: a Ctrl+C in the terminal reaches only this run, which
                # then ends its children in order (servers get SIGTERM and a grace period).
                start_new_session=True,
            )
        finally:
            if handle is not None:
                handle.close()  # the child has its own copy
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            with contextlib.suppress(Exception):
                self.stop(process, timeout=10)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_checked(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    """Run a short setup step; its stdout, or an error with its output."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and modules
        args, cwd=_workdir, env=env, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[1:])} failed ({done.returncode}):\n"
            f"{done.stdout.decode(errors='replace')[-2000:]}"
            f"{done.stderr.decode(errors='replace')[-4000:]}"
        )
    return done.stdout.decode()


def read_json_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The next JSON line a child writes, within `timeout` seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the load generator did not answer in time")
        ready, _, _ = select.select([process.stdout], [], [], min(remaining, 1.0))
        if ready:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"the load generator ended (exit {process.poll()})")
            return dict(json.loads(line))
        if process.poll() is not None:
            raise RuntimeError(f"the load generator ended (exit {process.returncode})")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples the RSS of processes (their sum) every `interval` seconds in a thread;
    keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> PeakRss:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, self._rss())

    def _rss(self) -> float:
        return sum(rss_mb(pid) for pid in self.pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self._rss())
                self.samples += 1
            except OSError:
                return


def cpu_seconds_of(pids: list[int]) -> float:
    """utime + stime summed over several processes."""
    return sum(cpu_seconds(pid) for pid in pids)
