"""The benchmark run: the emulator, the servers, the levels, the long conversations.

Everything the run starts is a subprocess of it and ends with it (try/finally, also on
Ctrl+C): the gateway emulator, daphne or uvicorn, the load generator, py-spy. All
traffic goes to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import openloop, procs, report
from .databases import BenchDatabase, PostgresDatabase, SqliteDatabase, Writes
from .profile import summarise
from .tls import TlsFiles, make_tls_files

ROOT = procs.ROOT
SONNET = "anthropic/claude-sonnet-4"
MESSAGE = "What are the three laws of thermodynamics?"
# Turns on the active path; "1000/50": with 50 branch points (versions off the path).
LONG_SIZES = ("10", "100", "1000", "1000/50")
WARMUP_CHATS = 5
PROFILE_LEVEL = 100
PROFILE_ROUNDS = 3
# "daphne2": two daphne processes on one host, the chats split between them (PostgreSQL +
# Redis only: the in-memory channel layer does not reach across processes).
SERVERS = ("daphne", "uvicorn", "daphne2")
DEFAULT_SERVERS = ("daphne", "uvicorn")
# Levels at which the API (streamed /v1/chat/completions) is measured too.
API_LEVELS = (1, 10, 100)
# The OpenAI shape's marks: a chunk with text, and the end of the stream.
API_MARKS = ['"delta": {"content": ', "data: [DONE]"]
DATABASES = ("sqlite", "postgres")


@dataclass
class Options:
    levels: list[int]
    servers: list[str]
    databases: list[str]
    long: bool = True
    load: bool = True
    profile: bool = False
    chat_timeout: float = 90.0
    tokens: int = 200
    first_token_delay: float = 0.05
    token_delay: float = 0.01
    long_repeats: int = 20
    uvicorn_ws: str = "websockets"
    # Also every server against an emulator that serves HTTPS (a trustme CA), and the
    # direct baseline over TLS: rows labelled "+tls".
    tls: bool = False
    # The open loop instead of the levels: Poisson arrivals at rising rates.
    open_loop: bool = False
    open_rates: tuple[float, ...] = openloop.DEFAULT_RATES
    open_step_seconds: float = openloop.DEFAULT_STEP_SECONDS
    seed: int = 20
    out_dir: Path = ROOT / "var" / "bench"
    say: Callable[[str], None] = print


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    # More processes of the same server (daphne2): the chats are split between them.
    others: list[Server] = field(default_factory=list)
    tls: bool = False  # the gateway (the emulator) is reached over HTTPS

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        return [self.pid, *(other.pid for other in self.others)]

    @property
    def ports(self) -> list[int]:
        return [self.port, *(other.port for other in self.others)]

    @property
    def label(self) -> str:
        return server_label(self.kind, self.tls)


def server_label(kind: str, tls: bool) -> str:
    return f"{kind}+tls" if tls else kind


@dataclass
class Run:
    options: Options
    processes: procs.Processes
    tmp: Path
    stamp: str
    emulator_port: int = 0
    emulator: subprocess.Popen[bytes] | None = None
    tls_emulator_port: int = 0
    tls_emulator: subprocess.Popen[bytes] | None = None
    tls_files: TlsFiles | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def say(self) -> Callable[[str], None]:
        return self.options.say


# --- environment -----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        memory = subprocess.run(
            ["/usr/bin/free", "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "free_h": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "commit": _commit(),
    }


def _commit() -> str:
    """The checked-out commit, read from .git without running git."""
    with contextlib.suppress(OSError):
        head = (ROOT / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        path = ROOT / ".git" / ref
        if path.exists():
            return path.read_text().strip()
        for line in (ROOT / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return ""


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DJANGO_SETTINGS_MODULE", "DJANGO_CSRF_TRUSTED_ORIGINS", "CHAT_DEFAULT_MODEL"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    # A chat here is one reply: the title a new conversation's first reply also asks the
    # model for (one small extra call per conversation, not per reply) stays out of it.
    env["CHAT_TITLES"] = "off"
    return env


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# --- the emulator ----------------------------------------------------------------------


def start_emulator(run: Run, tls: TlsFiles | None = None) -> tuple[int, subprocess.Popen[bytes]]:
    """The gateway emulator on a free port (over HTTPS with `tls`); returns when it listens."""
    port = procs.free_port()
    options = run.options
    name = "emulator-tls" if tls is not None else "emulator"
    args = procs.python(
        "-m", "tests.emulator",
        "--port", str(port),
        "--first-token-delay", str(options.first_token_delay),
        "--token-delay", str(options.token_delay),
        "--tokens", str(options.tokens),
    )  # fmt: skip
    if tls is not None:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    process = run.processes.start(args, env=base_env(), log=run.tmp / f"{name}.log")
    deadline = time.monotonic() + 20
    while not procs.port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {name} did not start: {_tail(run.tmp / f'{name}.log')}")
        time.sleep(0.1)
    return port, process


def start_emulators(run: Run) -> None:
    run.emulator_port, run.emulator = start_emulator(run)
    if run.options.tls:
        run.tls_files = make_tls_files(run.tmp / "tls")
        run.tls_emulator_port, run.tls_emulator = start_emulator(run, run.tls_files)


def emulator_pids(run: Run) -> list[int]:
    return [p.pid for p in (run.emulator, run.tls_emulator) if p is not None]


def emulator_env(run: Run, tls: bool = False) -> dict[str, str]:
    if tls:
        assert run.tls_files is not None
        base = f"https://127.0.0.1:{run.tls_emulator_port}"
    else:
        base = f"http://127.0.0.1:{run.emulator_port}"
    env = {
        "CLOUDFLARE_ACCOUNT_ID": "acct-test",
        "CLOUDFLARE_API_TOKEN": "test-token",
        "CLOUDFLARE_AI_GATEWAY": "default",
        "CLOUDFLARE_AI_GATEWAY_BASE_URL": f"{base}/v1",
        "CLOUDFLARE_API_BASE_URL": f"{base}/client/v4",
        "CLOUDFLARE_AI_GATEWAY_TOKEN": "",
    }
    if tls:
        assert run.tls_files is not None
        # httpx's default SSL context trusts exactly this file: the run's CA, nothing else.
        env["SSL_CERT_FILE"] = str(run.tls_files.ca)
    return env


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _tail(path: Path, size: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-size:]
    return ""


# --- one level of load -------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def drive(
    run: Run, job: dict[str, Any], watch: list[int] | None, db: BenchDatabase | None
) -> dict[str, Any]:
    """One level (or one open-loop step): connect, go, then the results and the metrics.

    `watch`: the server's processes (CPU and RSS are their sums)."""
    options = run.options
    log = run.tmp / "load.log"
    rss = procs.PeakRss(watch) if watch is not None else None
    assert run.emulator is not None
    generator = run.processes.start(
        procs.python("-m", "bench.load"), env=base_env(), log=log, pipes=True
    )
    try:
        assert generator.stdin is not None
        generator.stdin.write((json.dumps(job) + "\n").encode())
        generator.stdin.flush()
        ready = procs.read_json_line(generator, timeout=float(job["connect_timeout"]) + 60)
        writes_before = db.writes() if db is not None else None
        cpu_before = procs.cpu_seconds_of(watch) if watch is not None else 0.0
        emulator_cpu_before = procs.cpu_seconds_of(emulator_pids(run))
        loadavg = _loadavg()
        with rss if rss is not None else contextlib.nullcontext():
            generator.stdin.write(b"go\n")
            generator.stdin.flush()
            done = procs.read_json_line(
                generator, timeout=float(job.get("duration", 0)) + options.chat_timeout + 60
            )
        cpu_after = procs.cpu_seconds_of(watch) if watch is not None else 0.0
        emulator_cpu = procs.cpu_seconds_of(emulator_pids(run)) - emulator_cpu_before
    finally:
        run.processes.stop(generator, timeout=10)
    writes_after: Writes | None = None
    if db is not None:
        db.settle()
        writes_after = db.writes()

    results = done["results"]
    ok = [r for r in results if r["ok"]]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    totals = [r["total"] for r in ok]
    errors = collections.Counter(r["error"] for r in results if not r["ok"])
    replies = len(ok)
    out: dict[str, Any] = {
        "level": len(results),
        "ok": replies,
        "errors": len(results) - replies,
        "error_kinds": dict(errors),
        "ttft_ms": {f"p{q}": _ms(percentile(ttfts, q)) for q in (50, 95, 99)},
        "total_ms": {f"p{q}": _ms(percentile(totals, q)) for q in (50, 95, 99)},
        "ttft_ms_max": _ms(max(ttfts) if ttfts else None),
        "total_ms_max": _ms(max(totals) if totals else None),
        # Where the time to first token goes: the first frame back (the send is stored and
        # acknowledged) and the reply's `streaming` state (the runner has started).
        "first_frame_ms_p50": _ms(
            percentile([r["first_frame"] for r in ok if r.get("first_frame")], 50)
        ),
        "streaming_ms_p50": _ms(percentile([r["streaming"] for r in ok if r.get("streaming")], 50)),
        # First text of any kind (a streamed piece, or a catch-up that replaces the text).
        "first_visible_ms": {
            f"p{q}": _ms(percentile([r["first_visible"] for r in ok if r.get("first_visible")], q))
            for q in (50, 95)
        },
        "catchup_frames_per_reply": round(sum(r.get("catchup_frames", 0) for r in ok) / replies, 1)
        if replies
        else None,
        "text_frames_per_reply": round(sum(r["text_frames"] for r in ok) / replies, 1)
        if replies
        else None,
        "connect_s": round(ready["connect_s"], 3),
        "wall_s": round(done["wall_s"], 3),
        "loadgen_cpu_s": round(done["cpu_s"], 3),
        "emulator_cpu_s": round(emulator_cpu, 3),
        "loadavg_before": loadavg,
    }
    arrivals = [r["arrival"] for r in ok if r.get("arrival") is not None]
    if arrivals:  # the open loop: planned arrival until the send (the socket's opening)
        out["arrival_ms"] = {f"p{q}": _ms(percentile(arrivals, q)) for q in (50, 95)}
    if watch is not None and rss is not None:
        cpu = cpu_after - cpu_before
        out.update(
            server_cpu_s=round(cpu, 3),
            # Share of one core while the level ran: ~100% means the one event loop is full.
            server_cpu_pct=round(100 * cpu / done["wall_s"], 1) if done["wall_s"] else None,
            cpu_s_per_reply=round(cpu / replies, 4) if replies else None,
            rss_mb_peak=round(rss.peak, 1),
        )
    if writes_before is not None and writes_after is not None:
        rows = writes_after.rows - writes_before.rows
        out["db_writes"] = rows
        out["db_writes_per_reply"] = round(rows / replies, 2) if replies else None
        if writes_before.commits is not None and writes_after.commits is not None:
            commits = writes_after.commits - writes_before.commits
            out["db_commits_per_reply"] = round(commits / replies, 2) if replies else None
        if writes_after.tables:
            out["db_writes_by_table"] = {
                name: count - writes_before.tables.get(name, 0)
                for name, count in writes_after.tables.items()
                if count - writes_before.tables.get(name, 0)
            }
    return out


def wait_idle(pids: list[int], limit: float = 60.0, busy: float = 0.15) -> float:
    """Wait (at most `limit` seconds) until the processes use under `busy` of a core."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = procs.cpu_seconds_of(pids)
        time.sleep(0.5)
        if (procs.cpu_seconds_of(pids) - before) / 0.5 < busy:
            break
    return time.monotonic() - started


def idle_cpu(pids: list[int], seconds: float = 3.0) -> float:
    """The share of a core the processes use with no load (sweeps, heartbeats, timers)."""
    before = procs.cpu_seconds_of(pids)
    time.sleep(seconds)
    return (procs.cpu_seconds_of(pids) - before) / seconds


def ws_job(
    run: Run,
    server: Server,
    conversations: list[str],
    users: list[dict[str, Any]],
    first: int = 0,
) -> dict[str, Any]:
    """Chats on `conversations`, which are items `first`, `first + 1`, … of a fixture
    group: item i belongs to user i mod len(users)."""
    return {
        "mode": "ws",
        "host": "127.0.0.1",
        "port": server.port,
        "origin": f"http://127.0.0.1:{server.port}",
        "message": MESSAGE,
        "timeout": run.options.chat_timeout,
        "connect_timeout": 60,
        "connect_concurrency": 32,
        "chats": [
            {
                "path": f"/ws/conversations/{cid}/",
                "cookie": users[(first + i) % len(users)]["cookie"],
                # Several processes: chat i goes to process i mod n (round robin).
                "port": server.ports[i % len(server.ports)],
                "origin": f"http://127.0.0.1:{server.ports[i % len(server.ports)]}",
            }
            for i, cid in enumerate(conversations)
        ],
    }


def api_job(run: Run, server: Server, users: list[dict[str, Any]], level: int) -> dict[str, Any]:
    """`level` streamed calls of `/v1/chat/completions`, each with its own person's token."""
    return {
        "mode": "http",
        "host": "127.0.0.1",
        "port": server.port,
        "path": "/v1/chat/completions",
        "tokens": [user["token"] for user in users[:level]],
        "body": {
            "model": SONNET,
            "messages": [{"role": "user", "content": MESSAGE}],
            "max_tokens": 1024,
            "stream": True,
        },
        "marks": API_MARKS,
        "message": MESSAGE,
        "count": level,
        "timeout": run.options.chat_timeout,
        "connect_timeout": 60,
        "connect_concurrency": 64,
    }


def baseline(run: Run, tls: bool = False) -> list[dict[str, Any]]:
    rows = []
    for level in run.options.levels:
        job = {
            "mode": "http",
            "host": "127.0.0.1",
            "port": run.tls_emulator_port if tls else run.emulator_port,
            "tls_ca": str(run.tls_files.ca) if tls and run.tls_files else None,
            "path": f"/v1/acct-test/default/workers-ai/{SONNET}",
            "token": "test-token",
            "message": MESSAGE,
            "count": level,
            "timeout": run.options.chat_timeout,
            "connect_timeout": 60,
            "connect_concurrency": 64,
        }
        row = {"server": server_label("direct", tls), "database": "-"}
        row.update(drive(run, job, None, None))
        rows.append(row)
        run.say(report.row_line(row))
    return rows


# --- servers -------------------------------------------------------------------------------


def server_command(kind: str, port: int, uvicorn_ws: str = "websockets") -> list[str]:
    if kind in ("daphne", "daphne2"):
        return procs.python(
            "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"
        )
    return procs.python(
        "-m", "uvicorn", "chatsite.asgi:application",
        "--host", "127.0.0.1", "--port", str(port),
        "--ws", uvicorn_ws, "--lifespan", "on", "--loop", "asyncio",
        "--no-access-log", "--log-level", "warning",
    )  # fmt: skip


def start_servers(run: Run, kind: str, env: dict[str, str], tls: bool) -> Server:
    """The server under test: one process, or two daphne processes for "daphne2"."""
    if kind != "daphne2":
        server = start_server(run, kind, env)
        server.tls = tls
        return server
    first = start_server(run, kind, env)
    try:
        first.others.append(start_server(run, kind, env))
    except BaseException:
        run.processes.stop(first.process)
        raise
    first.tls = tls
    return first


def stop_servers(run: Run, server: Server) -> None:
    for one in (*server.others, server):
        run.processes.stop(one.process, timeout=20)


def start_server(run: Run, kind: str, env: dict[str, str]) -> Server:
    port = procs.free_port()
    log = run.tmp / f"{kind}-{port}.log"
    process = run.processes.start(
        server_command(kind, port, run.options.uvicorn_ws), env={**env, "PORT": str(port)}, log=log
    )
    server = Server(kind, port, process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited: {_tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _, _ = http_get(port, "/healthz", timeout=2)
            if status == 200:
                return server
        time.sleep(0.2)
    run.processes.stop(process)
    raise RuntimeError(f"{kind} did not become healthy: {_tail(log)}")


def http_get(
    port: int,
    path: str,
    cookie: str = "",
    timeout: float = 10,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, int, float]:
    """(status, body bytes, seconds) of one GET."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Cookie": cookie} if cookie else {}
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, len(body), time.perf_counter() - started
    finally:
        if connection is None:
            conn.close()


def server_env(
    run: Run, db: BenchDatabase, var_dir: Path, secret: str, tls: bool = False
) -> dict[str, str]:
    return {
        **base_env(),
        **emulator_env(run, tls),
        **db.env(),
        "CHAT_VAR_DIR": str(var_dir),
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secret,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    }


# --- long conversations -------------------------------------------------------------------


def long_over_http(
    run: Run, server: Server, long: dict[str, Any], cookie: str
) -> dict[str, dict[str, Any]]:
    """Opening each long conversation through the real server, on a keep-alive connection."""
    out = {}
    repeats = run.options.long_repeats
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for size, item in long.items():
            path = f"/conversations/{item['conversation']}/"
            for _ in range(3):
                status, size_bytes, _ = http_get(server.port, path, cookie, connection=conn)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
            times = [
                http_get(server.port, path, cookie, connection=conn)[2] for _ in range(repeats)
            ]
            out[size] = {
                "p50_ms": _ms(percentile(times, 50)),
                "p95_ms": _ms(percentile(times, 95)),
                "bytes": size_bytes,
            }
    finally:
        conn.close()
    return out


def long_in_process(run: Run, env: dict[str, str], long: dict[str, Any], cookie: str) -> Any:
    spec = json.dumps({"long": long, "cookie": cookie, "repeats": run.options.long_repeats})
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        procs.python("-m", "bench.inproc"),
        cwd=procs.workdir(),
        env=env,
        input=spec.encode(),
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.inproc failed: {done.stderr.decode(errors='replace')[-3000:]}")
    raw = json.loads(done.stdout)
    out = {}
    for size, item in raw.items():
        out[size] = {
            "reply_request_p50_ms": _ms(percentile(item["reply_request_s"], 50)),
            "reply_request_p95_ms": _ms(percentile(item["reply_request_s"], 95)),
            "reply_request_messages": item["reply_request_messages"],
            "reply_request_body_bytes": item["reply_request_body_bytes"],
            "reply_request_queries": item["reply_request_queries"],
            "page_inproc_p50_ms": _ms(percentile(item["page_inproc_s"], 50)),
            "page_inproc_p95_ms": _ms(percentile(item["page_inproc_s"], 95)),
            "page_bytes": item["page_bytes"],
            "page_queries": item["page_queries"],
            "visible_turns": item["visible_turns"],
        }
    return out


# --- profile --------------------------------------------------------------------------------


def profile_server(
    run: Run, server: Server, groups: list[list[str]], users: list[dict[str, Any]]
) -> dict[str, Any]:
    """py-spy on the server while it serves rounds of PROFILE_LEVEL chats."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        run.say("py-spy is not installed (pip install -e '.[bench]'): no profile")
        return {}
    run.options.out_dir.mkdir(parents=True, exist_ok=True)
    raw = run.options.out_dir / f"{run.stamp}-profile.txt"
    svg = run.options.out_dir / f"{run.stamp}-profile.svg"
    rounds: dict[str, Any] = {}
    half = max(1, len(groups) // 2 + len(groups) % 2)
    for fmt, output, chunk in (("raw", raw, groups[:half]), ("flamegraph", svg, groups[half:])):
        if not chunk:
            continue
        spy = run.processes.start(
            [py_spy, "record", "--pid", str(server.pid), "--format", fmt, "--rate", "100",
             "--duration", "600", "--output", str(output)],
            env=base_env(), log=run.tmp / "py-spy.log",
        )  # fmt: skip
        time.sleep(1.0)  # attached before the load starts
        try:
            for conversations in chunk:
                wait_idle(server.pids)
                row = drive(run, ws_job(run, server, conversations, users), server.pids, None)
                rounds.setdefault(fmt, []).append(row)
                run.say(f"  profile round ({fmt}): {report.row_line(row)}")
        finally:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl+C
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=30)
            run.processes.stop(spy)
    summary_path = run.options.out_dir / f"{run.stamp}-profile-summary.txt"
    summary = summarise(raw) if raw.exists() else {}
    if summary:
        summary_path.write_text(summary["text"])
        run.say(summary["text"])
    return {
        "server": server.label,
        "level": PROFILE_LEVEL,
        "raw": _relative(raw) if raw.exists() else None,
        "svg": _relative(svg) if svg.exists() else None,
        "summary": _relative(summary_path) if summary else None,
        "top": summary.get("top", []),
        "rounds": rounds,
    }


# --- the open loop ------------------------------------------------------------------------------


def server_variants(options: Options) -> list[tuple[str, bool]]:
    """(server kind, over TLS) for every server the run measures: with --tls, both."""
    modes = (False, True) if options.tls else (False,)
    return [(kind, tls) for kind in options.servers for tls in modes]


def open_seed(options: Options, rate: float) -> int:
    return options.seed * 100_000 + round(rate * 100)


def open_pool_size(options: Options) -> int:
    """Conversations enough for every step of the ramp and one refining step."""
    counts = [
        len(openloop.poisson_schedule(rate, options.open_step_seconds, open_seed(options, rate)))
        for rate in options.open_rates
    ]
    return sum(counts) + max(counts)


def open_loop(
    run: Run, db: BenchDatabase, server: Server, pool: list[str], users: list[dict[str, Any]]
) -> dict[str, Any]:
    """Poisson arrivals at rising rates, each step on its own, until one is not sustained."""
    options = run.options
    steps: list[dict[str, Any]] = []
    used = 0
    run.say(
        f"   open loop: {options.open_step_seconds:g} s of Poisson arrivals per rate, replies "
        f"of {options.tokens} tokens {options.token_delay * 1000:.1f} ms apart"
    )
    while (rate := openloop.next_rate(steps, options.open_rates)) is not None:
        times = openloop.poisson_schedule(rate, options.open_step_seconds, open_seed(options, rate))
        if used + len(times) > len(pool):
            run.results["notes"].append(f"open loop on {server.label}: out of conversations")
            break
        job = ws_job(run, server, pool[used : used + len(times)], users, first=used)
        for chat, at in zip(job["chats"], times, strict=True):
            chat["at"] = round(at, 6)
        job.update(
            mode="ws-open",
            duration=options.open_step_seconds,
            timeout=options.open_step_seconds + options.chat_timeout,
        )
        refined = any(not openloop.step_verdict(step) for step in steps)
        used += len(times)
        wait_idle(server.pids)
        step = drive(run, job, server.pids, db)
        step.update(rate=rate, arrivals=len(times), refined=refined)
        step["sustained"] = openloop.step_verdict(step)
        steps.append(step)
        run.say(report.open_step_line(step))
    entry = {
        "server": server.label,
        "database": db.name,
        "processes": len(server.pids),
        "step_seconds": options.open_step_seconds,
        "ttft_p95_limit_ms": openloop.TTFT_P95_LIMIT_MS,
        "steps": steps,
        "sustained_rate": openloop.highest_sustained(steps),
    }
    run.say(f"   {server.label} on {db.name}: {report.open_verdict(entry)}")
    return entry


# --- one database configuration ---------------------------------------------------------------


def run_database(run: Run, db: BenchDatabase, var_dir: Path, secret: str) -> None:
    options = run.options
    env = server_env(run, db, var_dir, secret)
    run.say(f"\n== {db.label}: migrate and fixtures")
    variants = server_variants(options)
    if db.name != "postgres" and any(kind == "daphne2" for kind, _ in variants):
        note = "daphne2 runs on PostgreSQL + Redis only (the in-memory layer is per process)"
        run.say(f"   {note}: skipped on {db.name}")
        run.results["notes"].append(f"{note}: skipped on {db.name}")
        variants = [(kind, tls) for kind, tls in variants if kind != "daphne2"]
    if not variants and not options.long:
        return
    db.create()
    procs.run_checked(procs.python("manage.py", "migrate", "--noinput", "-v", "0"), env)
    if not (var_dir / "static" / "staticfiles.json").exists():
        procs.run_checked(procs.python("manage.py", "collectstatic", "--noinput", "-v", "0"), env)
    groups: dict[str, int] = {}
    users_needed = WARMUP_CHATS
    if options.load:
        groups["warmup"] = WARMUP_CHATS
        if options.open_loop:
            groups["open"] = open_pool_size(options)
            # Consecutive arrivals rotate through the users: each one sends every
            # 4 / rate s at most, well within the per-user send limit (30 a minute).
            users_needed = max(users_needed, int(4 * max(options.open_rates)) + 1)
        else:
            groups.update({f"L{level}": level for level in options.levels})
            if options.profile and not run.results.get("profile"):
                groups.update({f"P{i}": PROFILE_LEVEL for i in range(PROFILE_ROUNDS)})
            # One user per concurrent chat: realistic, and within the per-user send limit.
            users_needed = max(users_needed, *groups.values())
    spec = {
        "users": users_needed if options.load else 1,
        "sets": {
            server_label(kind, tls): {
                k: v for k, v in groups.items() if (kind == "daphne" and not tls) or k[0] != "P"
            }
            for kind, tls in variants
        },
        "long": list(LONG_SIZES) if options.long else [],
        "count_writes": db.name == "sqlite",
        "api_tokens": options.load,
    }
    started = time.monotonic()
    fixtures = json.loads(
        _run_with_input(procs.python("-m", "bench.fixtures"), env, json.dumps(spec))
    )
    users = fixtures["users"]
    run.say(f"   {len(users)} users and their conversations in {time.monotonic() - started:.1f}s")

    for kind, tls in variants:
        server = start_servers(run, kind, server_env(run, db, var_dir, secret, tls), tls)
        try:
            run.say(
                f"-- {server.label} on {db.name} (pids {', '.join(map(str, server.pids))}, "
                f"ports {', '.join(map(str, server.ports))})"
            )
            if len(server.pids) > 1:
                run.say(
                    f"   {len(server.pids)} processes; the load generator sends chat i to "
                    f"process i mod {len(server.pids)} (round robin), and shares the "
                    f"{os.cpu_count()} cores with them, the emulator and the databases"
                )
            serve(run, db, server, fixtures)
        finally:
            stop_servers(run, server)
        kinds: collections.Counter[str] = collections.Counter()
        for one in (server, *server.others):
            kinds.update(log_problems(one.log))
        if kinds:
            run.results["server_log"].append(
                {
                    "server": server.label,
                    "database": db.name,
                    "problems": dict(kinds.most_common(10)),
                }
            )
            run.say(
                f"   {sum(kinds.values())} errors/warnings in the {server.label} log, most common:"
            )
            for line, count in kinds.most_common(3):
                run.say(f"     {count} x {line}")
    if options.long:
        try:
            timings = long_in_process(run, env, fixtures["long"], fixtures["reader"]["cookie"])
        except (RuntimeError, subprocess.SubprocessError) as exc:
            run.results["notes"].append(f"long conversations in-process on {db.name}: {exc}")
            run.say(f"   long conversations in-process failed: {exc}")
        else:
            run.results["long_inproc"].append({"database": db.name, "sizes": timings})
            run.say(f"   in-process: {report.long_inproc_line(timings)}")


_NUMBERS = re.compile(r"(turn=|Task-)\d+|[0-9a-f]{8}-[0-9a-f-]{27}|inmemory![A-Za-z]+")


def log_problems(path: Path) -> collections.Counter[str]:
    """Errors and warnings of a server log (plain lines or the JSON lines the app writes),
    grouped by logger, message and exception, with ids taken out."""
    kinds: collections.Counter[str] = collections.Counter()
    for line in _tail(path, 20_000_000).splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("level") not in ("ERROR", "WARNING"):
                continue
            exception = str(record.get("exception", "")).strip().splitlines()
            text = f"{record.get('logger')}: {str(record.get('message', '')).splitlines()[0]}"
            if exception:
                text += f" ({exception[-1][:100]})"
        elif " ERROR " in line or "ERROR:" in line or "Warning" in line:
            text = line.split(" ", 3)[-1]
        else:
            continue
        kinds[_NUMBERS.sub(lambda m: m.group(1) or "…", text)[:180]] += 1
    return kinds


def serve(run: Run, db: BenchDatabase, server: Server, fixtures: dict[str, Any]) -> None:
    """Everything measured on one running server, idle first, then heavier and heavier."""
    options = run.options
    users = fixtures["users"]
    sets = fixtures["sets"][server.label]
    if options.load:
        drive(run, ws_job(run, server, sets["warmup"], users), server.pids, None)
    if options.long:
        # Before the load: an idle server, not one still finishing abandoned replies.
        wait_idle(server.pids)
        try:
            timings = long_over_http(run, server, fixtures["long"], fixtures["reader"]["cookie"])
        except (RuntimeError, OSError, http.client.HTTPException) as exc:
            run.results["notes"].append(f"long conversations on {server.label}/{db.name}: {exc}")
            run.say(f"   opening long conversations failed: {exc}")
        else:
            run.results["long_http"].append(
                {"server": server.label, "database": db.name, "sizes": timings}
            )
            run.say(f"   opening long conversations: {report.long_line(timings)}")
    if not options.load:
        return
    wait_idle(server.pids)
    idle = idle_cpu(server.pids)
    run.say(f"   idle server: {idle * 100:.1f}% of a core")
    run.results["servers"].append(
        {
            "server": server.label,
            "database": db.name,
            "processes": len(server.pids),
            "idle_cpu_pct": round(idle * 100, 2),
            "rss_mb_idle_after_warmup": round(sum(procs.rss_mb(p) for p in server.pids), 1),
        }
    )
    if options.open_loop:
        run.results["open_loop"].append(open_loop(run, db, server, sets["open"], users))
        return
    for level in options.levels:
        wait_idle(server.pids)
        row = drive(run, ws_job(run, server, sets[f"L{level}"], users), server.pids, db)
        row = {"server": server.label, "database": db.name, **row}
        if row.get("ok") and row.get("server_cpu_s") is not None:
            # The same CPU time less what the idle server would have used meanwhile.
            net = row["server_cpu_s"] - idle * row["wall_s"]
            row["cpu_s_per_reply_net"] = round(net / row["ok"], 4)
        if row.get("server_cpu_s") is not None:
            row["cpu_s_per_chat"] = round(row["server_cpu_s"] / row["level"], 4)
        row["server_idle_cpu_pct"] = round(idle * 100, 2)
        run.results["rows"].append(row)
        run.say(report.row_line(row))
        if row["level"] == 0 or row["errors"] == row["level"]:
            run.say(f"   every chat failed: see the {server.label} log ({server.log})")
        # Profile at PROFILE_LEVEL, before any heavier level leaves a backlog behind.
        next_level = next((n for n in options.levels if n > level), None)
        profile_now = level >= PROFILE_LEVEL or next_level is None or next_level > PROFILE_LEVEL
        if "P0" in sets and profile_now and not run.results.get("profile"):
            profile_groups = [sets[f"P{i}"] for i in range(PROFILE_ROUNDS)]
            run.say(f"-- profiling {server.label} under {PROFILE_LEVEL} chats (py-spy)")
            run.results["profile"] = profile_server(run, server, profile_groups, users)
    api_levels = [n for n in options.levels if n in API_LEVELS]
    if len(server.pids) > 1:
        api_levels = []  # the API client speaks to one port; the socket rows are the measure
    if api_levels:  # warm the API's own paths up first, as the socket's were
        wait_idle(server.pids)
        drive(run, api_job(run, server, users, WARMUP_CHATS), server.pids, None)
    for level in api_levels:
        wait_idle(server.pids)
        row = drive(run, api_job(run, server, users, level), server.pids, db)
        row = {"server": f"{server.label} /v1", "database": db.name, "path": "api", **row}
        if row.get("server_cpu_s") is not None:
            row["cpu_s_per_chat"] = round(row["server_cpu_s"] / row["level"], 4)
        run.results["rows"].append(row)
        run.say(report.row_line(row))


def _run_with_input(args: list[str], env: dict[str, str], data: str) -> str:
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        args,
        cwd=procs.workdir(),
        env=env,
        input=data.encode(),
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[-1]} failed: {done.stderr.decode(errors='replace')[-3000:]}")
    return done.stdout.decode()


# --- the whole run -----------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(options: Options) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    run = Run(options, procs.Processes(), tmp, stamp)
    run.results = {
        "stamp": stamp,
        "machine": machine_info(),
        "settings": {
            "levels": options.levels,
            "servers": options.servers,
            "databases": options.databases,
            "emulator": {
                "tokens": options.tokens,
                "first_token_delay_s": options.first_token_delay,
                "token_delay_s": options.token_delay,
            },
            "chat_timeout_s": options.chat_timeout,
            "tls": options.tls,
            "open_loop": {
                "rates": list(options.open_rates),
                "step_seconds": options.open_step_seconds,
                "seed": options.seed,
            }
            if options.open_loop
            else None,
            "commands": {kind: server_command(kind, 0, options.uvicorn_ws)[1:] for kind in SERVERS},
            "chat_env": {k: v for k, v in os.environ.items() if k.startswith("CHAT_")},
        },
        "baseline": [],
        "rows": [],
        "open_loop": [],
        "servers": [],
        "long_http": [],
        "long_inproc": [],
        "server_log": [],
        "notes": [],
    }
    started = time.monotonic()
    secret = secrets.token_urlsafe(40)
    var_dir = tmp / "var"
    var_dir.mkdir()
    finished = False
    try:
        with _sigterm_as_interrupt():
            procs.snapshot_source(tmp / "src")
            start_emulators(run)
            options.say(f"gateway emulator on port {run.emulator_port}: {options.tokens} tokens, "
                        f"first after {options.first_token_delay * 1000:.0f} ms, "
                        f"then {options.token_delay * 1000:.1f} ms apart")  # fmt: skip
            if options.tls:
                options.say(f"and over HTTPS on port {run.tls_emulator_port} (a throwaway "
                            "trustme CA that only this run's processes trust)")  # fmt: skip
            options.say(report.header())
            if options.load and not options.open_loop:
                run.results["baseline"] = baseline(run)
                if options.tls:
                    run.results["baseline"] += baseline(run, tls=True)
            for name in options.databases:
                db: BenchDatabase
                if name == "postgres":
                    reason = PostgresDatabase.unavailable()
                    if reason:
                        note = f"PostgreSQL + Redis skipped: {reason}"
                        options.say(note)
                        run.results["notes"].append(note)
                        continue
                    db = PostgresDatabase()
                else:
                    db = SqliteDatabase(tmp / "sqlite")
                try:
                    run_database(run, db, var_dir, secret)
                finally:
                    db.drop()
        finished = True
    finally:
        run.processes.stop_all()
        procs.reset_workdir()
        run.results["duration_s"] = round(time.monotonic() - started, 1)
        results = run.results
        if results["rows"] or results["baseline"] or results["long_http"] or results["open_loop"]:
            paths = report.write(run.results, options.out_dir, stamp)
            if results["rows"] or results["baseline"]:
                options.say("\n" + report.table(run.results))
            if results["open_loop"]:
                options.say("\n" + report.open_loop_table(run.results))
            if run.results["long_http"] or run.results["long_inproc"]:
                options.say("\n" + report.long_table(run.results))
            for path in paths:
                options.say(f"wrote {_relative(path)}")
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            options.say(f"logs of this run are kept in {tmp}")
    return run.results
