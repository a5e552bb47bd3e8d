"""`manage.py bench`: the streaming benchmark behind `make bench` (see docs/performance.md).

Starts the gateway emulator and the real server (daphne, and uvicorn beside it) as
subprocesses on SQLite and on PostgreSQL + Redis, drives simulated browser users over
the chat WebSocket at each concurrency level from a separate load-generator process,
measures the emulator directly as the baseline, and times opening and building the
upstream request of long conversations. `--tls` adds every row again with the emulator
serving HTTPS (as Cloudflare does); `--open-loop` replaces the levels by Poisson
arrivals at rising rates and reports the highest rate one process sustains;
`--servers daphne2` measures two daphne processes on one host. Prints a table and writes
`var/bench/<stamp>.json` and `var/bench/<stamp>.png`.

This process only orchestrates: the servers, the setup of the bench databases and the
load all run in their own processes with their own environment, so the settings this
command was started with (and the project's own database) are not used.
"""

from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from bench import openloop
from bench.runner import DATABASES, DEFAULT_SERVERS, ROOT, SERVERS, Options, run

DEFAULT_LEVELS = [1, 10, 100, 500]
QUICK_LEVELS = [1, 10]
MAX_LEVEL = 1000
MAX_RATE = 200.0


def _levels(value: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError as exc:
        raise ArgumentTypeError("levels are whole numbers, e.g. 1,10,100,500") from exc
    if not levels or levels[0] < 1 or levels[-1] > MAX_LEVEL:
        raise ArgumentTypeError(f"levels must be between 1 and {MAX_LEVEL}")
    return levels


def _rates(value: str) -> tuple[float, ...]:
    try:
        rates = tuple(sorted({float(part) for part in value.split(",") if part.strip()}))
    except ValueError as exc:
        raise ArgumentTypeError("rates are numbers of chats a second, e.g. 1,2,4,8") from exc
    if not rates or rates[0] <= 0 or rates[-1] > MAX_RATE:
        raise ArgumentTypeError(f"rates must be above 0 and at most {MAX_RATE:g}")
    return rates


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(value: str) -> list[str]:
        chosen = [part.strip() for part in value.split(",") if part.strip()]
        unknown = sorted(set(chosen) - set(allowed))
        if unknown or not chosen:
            raise ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return [name for name in allowed if name in chosen]

    return parse


class Command(BaseCommand):
    help = "Benchmark streaming replies over the real WebSocket (daphne and uvicorn)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--levels", type=_levels, default=None, help="concurrent chats (default 1,10,100,500)"
        )
        parser.add_argument(
            "--servers",
            type=_choices(SERVERS),
            default=None,
            help="daphne,uvicorn,daphne2 (default daphne,uvicorn; with --open-loop, daphne). "
            "daphne2: two daphne processes, chats split round robin (PostgreSQL + Redis only)",
        )
        parser.add_argument(
            "--databases",
            type=_choices(DATABASES),
            default=list(DATABASES),
            help="sqlite,postgres (postgres is skipped with a note when PostgreSQL or "
            "Redis is not reachable)",
        )
        parser.add_argument("--quick", action="store_true", help="levels 1,10: does it work?")
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--long-only", action="store_true", help="only the long-conversation benchmark"
        )
        group.add_argument(
            "--skip-long", action="store_true", help="skip the long-conversation benchmark"
        )
        parser.add_argument(
            "--profile",
            action="store_true",
            help="also profile daphne with py-spy under 100 chats (extra rounds, not measured)",
        )
        parser.add_argument(
            "--tls",
            action="store_true",
            help="also measure with the emulator serving HTTPS (a throwaway trustme CA): "
            "rows labelled +tls, the direct baseline too",
        )
        parser.add_argument(
            "--open-loop",
            action="store_true",
            help="instead of the levels: Poisson arrivals at rising rates, replies of "
            f"{openloop.REPLY_TOKENS} tokens at {openloop.TOKENS_PER_SECOND:g} a second; "
            "reports the highest rate sustained with TTFT p95 <= 1 s",
        )
        parser.add_argument(
            "--open-loop-rates",
            type=_rates,
            default=openloop.DEFAULT_RATES,
            help="chats a second, tried in order until one is not sustained "
            "(default 1,2,4,8,16,32)",
        )
        parser.add_argument(
            "--open-loop-seconds",
            type=float,
            default=openloop.DEFAULT_STEP_SECONDS,
            help="seconds of arrivals at each rate (default 20)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=90.0,
            help="seconds a chat may take before it counts as an error (default 90)",
        )
        parser.add_argument(
            "--uvicorn-ws",
            choices=["websockets", "websockets-sansio", "wsproto"],
            default="websockets",
            help="uvicorn's WebSocket implementation (default websockets)",
        )
        parser.add_argument(
            "--out", type=Path, default=ROOT / "var" / "bench", help="where results go"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        levels = options["levels"] or (QUICK_LEVELS if options["quick"] else DEFAULT_LEVELS)
        if options["timeout"] <= 0 or options["timeout"] > 600:
            raise CommandError("--timeout must be between 0 and 600 seconds")
        if not 1 <= options["open_loop_seconds"] <= 600:
            raise CommandError("--open-loop-seconds must be between 1 and 600")
        open_loop = options["open_loop"]
        if open_loop and options["long_only"]:
            raise CommandError("--open-loop and --long-only exclude each other")
        servers = options["servers"] or (["daphne"] if open_loop else list(DEFAULT_SERVERS))
        reply: dict[str, Any] = {}
        if open_loop:
            reply = {
                "tokens": openloop.REPLY_TOKENS,
                "token_delay": round(1 / openloop.TOKENS_PER_SECOND, 6),
            }

        def say(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        settings = Options(
            levels=levels,
            servers=servers,
            databases=options["databases"],
            long=not options["skip_long"] and not open_loop,
            load=not options["long_only"],
            profile=options["profile"],
            chat_timeout=options["timeout"],
            out_dir=options["out"].resolve(),
            uvicorn_ws=options["uvicorn_ws"],
            tls=options["tls"],
            open_loop=open_loop,
            open_rates=options["open_loop_rates"],
            open_step_seconds=options["open_loop_seconds"],
            say=say,
            **reply,
        )
        try:
            results = run(settings)
        except KeyboardInterrupt as exc:
            raise CommandError("interrupted; every process of the run was stopped") from exc
        except (RuntimeError, TimeoutError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        # (An open loop ends on a step with errors by design: its table says so.)
        errors = sum(row["errors"] for row in results["rows"] + results["baseline"])
        if errors:
            say(f"{errors} chats ended in an error (see error_kinds in the JSON)")
