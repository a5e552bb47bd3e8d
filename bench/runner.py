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

from . import procs, report
from .databases import BenchDatabase, PostgresDatabase, SqliteDatabase, Writes
from .profile import summarise

ROOT = procs.ROOT
SONNET = "anthropic/claude-sonnet-4"
MESSAGE = "What are the three laws of thermodynamics?"
# Turns on the active path; "1000/50": with 50 branch points (versions off the path).
LONG_SIZES = ("10", "100", "1000", "1000/50")
WARMUP_CHATS = 5
PROFILE_LEVEL = 100
PROFILE_ROUNDS = 3
SERVERS = ("daphne", "uvicorn")
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
    out_dir: Path = ROOT / "var" / "bench"
    say: Callable[[str], None] = print


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Run:
    options: Options
    processes: procs.Processes
    tmp: Path
    stamp: str
    emulator_port: int = 0
    emulator: subprocess.Popen[bytes] | None = None
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
    return env


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# --- the emulator ----------------------------------------------------------------------


def start_emulator(run: Run) -> None:
    run.emulator_port = procs.free_port()
    options = run.options
    run.emulator = run.processes.start(
        procs.python(
            "-m", "tests.emulator",
            "--port", str(run.emulator_port),
            "--first-token-delay", str(options.first_token_delay),
            "--token-delay", str(options.token_delay),
            "--tokens", str(options.tokens),
        ),
        env=base_env(),
        log=run.tmp / "emulator.log",
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not procs.port_open(run.emulator_port):
        if run.emulator.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the emulator did not start: {_tail(run.tmp / 'emulator.log')}")
        time.sleep(0.1)


def emulator_env(run: Run) -> dict[str, str]:
    base = f"http://127.0.0.1:{run.emulator_port}"
    return {
        "CLOUDFLARE_ACCOUNT_ID": "acct-test",
        "CLOUDFLARE_API_TOKEN": "test-token",
        "CLOUDFLARE_AI_GATEWAY": "default",
        "CLOUDFLARE_AI_GATEWAY_BASE_URL": f"{base}/v1",
        "CLOUDFLARE_API_BASE_URL": f"{base}/client/v4",
        "CLOUDFLARE_AI_GATEWAY_TOKEN": "",
    }


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
    run: Run, job: dict[str, Any], watch: int | None, db: BenchDatabase | None
) -> dict[str, Any]:
    """One level: connect everything, then the barrier, then the results and the metrics."""
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
        cpu_before = procs.cpu_seconds(watch) if watch is not None else 0.0
        emulator_cpu_before = procs.cpu_seconds(run.emulator.pid)
        loadavg = _loadavg()
        with rss if rss is not None else contextlib.nullcontext():
            generator.stdin.write(b"go\n")
            generator.stdin.flush()
            done = procs.read_json_line(generator, timeout=options.chat_timeout + 60)
        cpu_after = procs.cpu_seconds(watch) if watch is not None else 0.0
        emulator_cpu = procs.cpu_seconds(run.emulator.pid) - emulator_cpu_before
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


def wait_idle(pid: int, limit: float = 60.0, busy: float = 0.15) -> float:
    """Wait (at most `limit` seconds) until the process uses under `busy` of a core."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = procs.cpu_seconds(pid)
        time.sleep(0.5)
        if (procs.cpu_seconds(pid) - before) / 0.5 < busy:
            break
    return time.monotonic() - started


def idle_cpu(pid: int, seconds: float = 3.0) -> float:
    """The share of a core the process uses with no load (sweeps, heartbeats, timers)."""
    before = procs.cpu_seconds(pid)
    time.sleep(seconds)
    return (procs.cpu_seconds(pid) - before) / seconds


def ws_job(
    run: Run, server: Server, conversations: list[str], users: list[dict[str, Any]]
) -> dict[str, Any]:
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
            {"path": f"/ws/conversations/{cid}/", "cookie": users[i % len(users)]["cookie"]}
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


def baseline(run: Run) -> list[dict[str, Any]]:
    rows = []
    for level in run.options.levels:
        job = {
            "mode": "http",
            "host": "127.0.0.1",
            "port": run.emulator_port,
            "path": f"/v1/acct-test/default/workers-ai/{SONNET}",
            "token": "test-token",
            "message": MESSAGE,
            "count": level,
            "timeout": run.options.chat_timeout,
            "connect_timeout": 60,
            "connect_concurrency": 64,
        }
        row = {"server": "direct", "database": "-", **drive(run, job, None, None)}
        rows.append(row)
        run.say(report.row_line(row))
    return rows


# --- servers -------------------------------------------------------------------------------


def server_command(kind: str, port: int, uvicorn_ws: str = "websockets") -> list[str]:
    if kind == "daphne":
        return procs.python(
            "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"
        )
    return procs.python(
        "-m", "uvicorn", "chatsite.asgi:application",
        "--host", "127.0.0.1", "--port", str(port),
        "--ws", uvicorn_ws, "--lifespan", "on", "--loop", "asyncio",
        "--no-access-log", "--log-level", "warning",
    )  # fmt: skip


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


def server_env(run: Run, db: BenchDatabase, var_dir: Path, secret: str) -> dict[str, str]:
    return {
        **base_env(),
        **emulator_env(run),
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
                wait_idle(server.pid)
                row = drive(run, ws_job(run, server, conversations, users), server.pid, None)
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
        "server": server.kind,
        "level": PROFILE_LEVEL,
        "raw": _relative(raw) if raw.exists() else None,
        "svg": _relative(svg) if svg.exists() else None,
        "summary": _relative(summary_path) if summary else None,
        "top": summary.get("top", []),
        "rounds": rounds,
    }


# --- one database configuration ---------------------------------------------------------------


def run_database(run: Run, db: BenchDatabase, var_dir: Path, secret: str) -> None:
    options = run.options
    env = server_env(run, db, var_dir, secret)
    run.say(f"\n== {db.label}: migrate and fixtures")
    db.create()
    procs.run_checked(procs.python("manage.py", "migrate", "--noinput", "-v", "0"), env)
    if not (var_dir / "static" / "staticfiles.json").exists():
        procs.run_checked(procs.python("manage.py", "collectstatic", "--noinput", "-v", "0"), env)
    groups: dict[str, int] = {}
    if options.load:
        groups["warmup"] = WARMUP_CHATS
        groups.update({f"L{level}": level for level in options.levels})
        if options.profile and not run.results.get("profile"):
            groups.update({f"P{i}": PROFILE_LEVEL for i in range(PROFILE_ROUNDS)})
    spec = {
        # One user per concurrent chat: realistic, and within the per-user send limit.
        "users": max(max(groups.values(), default=1), WARMUP_CHATS) if options.load else 1,
        "sets": {
            server: {k: v for k, v in groups.items() if server == "daphne" or k[0] != "P"}
            for server in options.servers
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

    for kind in options.servers:
        server = start_server(run, kind, env)
        try:
            run.say(f"-- {kind} on {db.name} (pid {server.pid}, port {server.port})")
            serve(run, db, server, fixtures)
        finally:
            run.processes.stop(server.process, timeout=20)
        kinds = log_problems(server.log)
        if kinds:
            run.results["server_log"].append(
                {"server": kind, "database": db.name, "problems": dict(kinds.most_common(10))}
            )
            run.say(f"   {sum(kinds.values())} errors/warnings in the {kind} log, most common:")
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
    sets = fixtures["sets"][server.kind]
    if options.load:
        drive(run, ws_job(run, server, sets["warmup"], users), server.pid, None)
    if options.long:
        # Before the load: an idle server, not one still finishing abandoned replies.
        wait_idle(server.pid)
        try:
            timings = long_over_http(run, server, fixtures["long"], fixtures["reader"]["cookie"])
        except (RuntimeError, OSError, http.client.HTTPException) as exc:
            run.results["notes"].append(f"long conversations on {server.kind}/{db.name}: {exc}")
            run.say(f"   opening long conversations failed: {exc}")
        else:
            run.results["long_http"].append(
                {"server": server.kind, "database": db.name, "sizes": timings}
            )
            run.say(f"   opening long conversations: {report.long_line(timings)}")
    if not options.load:
        return
    wait_idle(server.pid)
    idle = idle_cpu(server.pid)
    run.say(f"   idle server: {idle * 100:.1f}% of a core")
    run.results["servers"].append(
        {
            "server": server.kind,
            "database": db.name,
            "idle_cpu_pct": round(idle * 100, 2),
            "rss_mb_idle_after_warmup": round(procs.rss_mb(server.pid), 1),
        }
    )
    for level in options.levels:
        wait_idle(server.pid)
        row = drive(run, ws_job(run, server, sets[f"L{level}"], users), server.pid, db)
        row = {"server": server.kind, "database": db.name, **row}
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
            run.say(f"   every chat failed: see the {server.kind} log ({server.log})")
        # Profile at PROFILE_LEVEL, before any heavier level leaves a backlog behind.
        next_level = next((n for n in options.levels if n > level), None)
        profile_now = level >= PROFILE_LEVEL or next_level is None or next_level > PROFILE_LEVEL
        if "P0" in sets and profile_now and not run.results.get("profile"):
            profile_groups = [sets[f"P{i}"] for i in range(PROFILE_ROUNDS)]
            run.say(f"-- profiling {server.kind} under {PROFILE_LEVEL} chats (py-spy)")
            run.results["profile"] = profile_server(run, server, profile_groups, users)
    api_levels = [n for n in options.levels if n in API_LEVELS]
    if api_levels:  # warm the API's own paths up first, as the socket's were
        wait_idle(server.pid)
        drive(run, api_job(run, server, users, WARMUP_CHATS), server.pid, None)
    for level in api_levels:
        wait_idle(server.pid)
        row = drive(run, api_job(run, server, users, level), server.pid, db)
        row = {"server": f"{server.kind} /v1", "database": db.name, "path": "api", **row}
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
            "commands": {kind: server_command(kind, 0, options.uvicorn_ws)[1:] for kind in SERVERS},
            "chat_env": {k: v for k, v in os.environ.items() if k.startswith("CHAT_")},
        },
        "baseline": [],
        "rows": [],
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
            start_emulator(run)
            options.say(f"gateway emulator on port {run.emulator_port}: {options.tokens} tokens, "
                        f"first after {options.first_token_delay * 1000:.0f} ms, "
                        f"then {options.token_delay * 1000:.0f} ms apart")  # fmt: skip
            options.say(report.header())
            if options.load:
                run.results["baseline"] = baseline(run)
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
        if run.results["rows"] or run.results["baseline"] or run.results["long_http"]:
            paths = report.write(run.results, options.out_dir, stamp)
            options.say("\n" + report.table(run.results))
            if run.results["long_http"] or run.results["long_inproc"]:
                options.say("\n" + report.long_table(run.results))
            for path in paths:
                options.say(f"wrote {_relative(path)}")
        if finished:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            options.say(f"logs of this run are kept in {tmp}")
    return run.results
