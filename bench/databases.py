"""The bench databases: a throwaway SQLite file, or a throwaway PostgreSQL database + Redis.

Each knows how to count the rows the server wrote (for database writes per reply):
on PostgreSQL from ``pg_stat_user_tables`` (and commits from ``pg_stat_database``),
on SQLite from the trigger counter that ``bench.fixtures`` installs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BENCH_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
# The throwaway database is `<prefix>_<pid>` (several runs on one PostgreSQL keep apart).
PG_DBNAME_PREFIX = os.environ.get("BENCH_POSTGRES_PREFIX", "chat_bench")


@dataclass
class Writes:
    rows: int
    commits: int | None = None
    tables: dict[str, int] = field(default_factory=dict)


class BenchDatabase:
    name = ""
    label = ""

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def writes(self) -> Writes | None:
        return None

    def settle(self) -> None:
        """Wait until the counters include everything written so far."""

    def drop(self) -> None:
        raise NotImplementedError


class SqliteDatabase(BenchDatabase):
    name = "sqlite"
    label = "SQLite, in-memory channel layer"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "bench.sqlite3"

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": f"sqlite:///{self.path}", "REDIS_URL": ""}

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def writes(self) -> Writes | None:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT n FROM bench_writes WHERE id = 1").fetchone()
        except sqlite3.Error:
            return None
        return Writes(rows=int(row[0])) if row else None

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()


class PostgresDatabase(BenchDatabase):
    """A database `chat_bench_<pid>` made for this run (`BENCH_POSTGRES_PREFIX` changes the
    prefix), with Redis database 15 as channel layer."""

    name = "postgres"
    label = "PostgreSQL + Redis channel layer"

    def __init__(self) -> None:
        if not PG_DBNAME_PREFIX.replace("_", "").isalnum():
            raise RuntimeError("BENCH_POSTGRES_PREFIX: letters, digits and _ only")
        self.dbname = f"{PG_DBNAME_PREFIX}_{os.getpid()}"
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.dbname}"
        self.created = False

    @staticmethod
    def unavailable() -> str | None:
        """Why this configuration cannot run here, or None."""
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            return f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__})"
        try:
            import redis

            client = redis.Redis.from_url(REDIS_BENCH_URL, socket_timeout=3)
            client.ping()
            client.close()
        except Exception as exc:
            return f"Redis at {REDIS_BENCH_URL} is not reachable ({type(exc).__name__})"
        return None

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.url, "REDIS_URL": REDIS_BENCH_URL}

    def create(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(self.dbname)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        self.created = True
        self._flush_redis()

    def settle(self) -> None:
        # Backends report their table statistics when they end a transaction while
        # idle (at most once a second) and when they exit; with CONN_MAX_AGE=0 the
        # server's connections exit after each use. Wait past that second.
        time.sleep(1.2)

    def writes(self) -> Writes | None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            rows = conn.execute(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
            ).fetchall()
            commits = conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        tables = {str(name): int(count or 0) for name, count in rows}
        return Writes(
            rows=sum(tables.values()),
            commits=int(commits[0]) if commits else None,
            tables=tables,
        )

    def _flush_redis(self) -> None:
        """Delete the channel layer's keys (prefix `asgi`) in the bench Redis database."""
        import redis

        client = redis.Redis.from_url(REDIS_BENCH_URL, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match="asgi*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()

    def drop(self) -> None:
        if not self.created:
            return
        import psycopg
        from psycopg import sql

        with contextlib.suppress(Exception):
            self._flush_redis()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.dbname)
                )
            )
        self.created = False
