"""What a run prints and writes: the table, `var/bench/<stamp>.json` and `<stamp>.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = (
    ("server", "server"),
    ("db", "database"),
    ("chats", "level"),
    ("errors", "errors"),
    ("TTFT p50", "ttft_ms.p50"),
    ("TTFT p95", "ttft_ms.p95"),
    ("TTFT p99", "ttft_ms.p99"),
    ("total p50", "total_ms.p50"),
    ("total p95", "total_ms.p95"),
    ("RSS MB", "rss_mb_peak"),
    ("CPU ms/reply", "cpu_ms_per_reply"),
    ("DB writes/reply", "db_writes_per_reply"),
    ("commits/reply", "db_commits_per_reply"),
)


def _value(row: dict[str, Any], key: str) -> Any:
    if key == "cpu_ms_per_reply":
        value = row.get("cpu_s_per_reply")
        return None if value is None else round(value * 1000, 1)
    current: Any = row
    for part in key.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def header() -> str:
    return "times in ms; " + " | ".join(title for title, _ in COLUMNS)


def row_line(row: dict[str, Any]) -> str:
    cells = [f"{title}={_cell(_value(row, key))}" for title, key in COLUMNS]
    line = "  " + " ".join(cells)
    if row.get("error_kinds"):
        line += f"  {row['error_kinds']}"
    return line


def table(results: dict[str, Any]) -> str:
    """The markdown table: the direct baseline per level, then every server, database and level."""
    rows = sorted(results.get("baseline", []), key=lambda r: r["level"]) + results.get("rows", [])
    titles = [title for title, _ in COLUMNS]
    lines = [
        "| " + " | ".join(titles) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(titles))) + "|",
    ]
    for row in rows:
        cells = [_cell(_value(row, key)) for _, key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def long_line(sizes: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{size} turns p50 {item['p50_ms']} ms (p95 {item['p95_ms']})"
        for size, item in sizes.items()
    )


def long_inproc_line(sizes: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{size} turns: reply_request p50 {item['reply_request_p50_ms']} ms, "
        f"page p50 {item['page_inproc_p50_ms']} ms"
        for size, item in sizes.items()
    )


def long_table(results: dict[str, Any]) -> str:
    """Opening a conversation (real server, over HTTP) and building its upstream request."""
    lines = [
        "| turns | config | GET page p50 ms | GET page p95 ms | page KB |",
        "|---:|---|---:|---:|---:|",
    ]
    for entry in results.get("long_http", []):
        for size, item in entry["sizes"].items():
            lines.append(
                f"| {size} | {entry['server']}/{entry['database']} | {item['p50_ms']} | "
                f"{item['p95_ms']} | {item['bytes'] / 1024:.0f} |"
            )
    lines += [
        "",
        "| turns | database | reply_request p50 ms | p95 ms | messages | body KB | queries "
        "| page in-process p50 ms | page queries |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in results.get("long_inproc", []):
        for size, item in entry["sizes"].items():
            lines.append(
                f"| {size} | {entry['database']} | {item['reply_request_p50_ms']} | "
                f"{item['reply_request_p95_ms']} | {item['reply_request_messages']} | "
                f"{item['reply_request_body_bytes'] / 1024:.0f} | "
                f"{item['reply_request_queries']} | {item['page_inproc_p50_ms']} | "
                f"{item['page_queries']} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    """TTFT p95 and total p95 against concurrency: one line per configuration, baseline dashed."""
    rows = results.get("rows", [])
    base = sorted(results.get("baseline", []), key=lambda r: r["level"])
    if not rows and not base:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    panels = (("ttft_ms", "time to first token, p95"), ("total_ms", "total time, p95"))
    configs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        configs.setdefault(f"{row['server']} / {row['database']}", []).append(row)
    for axis, (key, title) in zip(axes, panels, strict=True):
        for label, series in configs.items():
            series = sorted(series, key=lambda r: r["level"])
            points = [(r["level"], r[key]["p95"]) for r in series if r[key]["p95"] is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
            failed = [(r["level"], r[key]["p95"]) for r in series if r["errors"] and r[key]["p95"]]
            if failed:
                axis.scatter(*zip(*failed, strict=True), marker="x", s=90, color="red", zorder=5)
        points = [(r["level"], r[key]["p95"]) for r in base if r[key]["p95"] is not None]
        if points:
            axis.plot(
                *zip(*points, strict=True),
                linestyle="--",
                color="black",
                marker=".",
                label="direct from the emulator (baseline)",
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        levels = sorted({r["level"] for r in rows + base})
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.yaxis.set_major_formatter(ScalarFormatter())
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("concurrent chats")
        axis.set_ylabel("ms")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    machine = results.get("machine", {})
    fig.suptitle(
        f"chat streaming benchmark {results.get('stamp', '')} — {machine.get('nproc')} cores, "
        f"{machine.get('cpu_model', '')}, Python {machine.get('python', '')} "
        "(red x: level with errors)",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    written.append(json_path)
    png_path = out_dir / f"{stamp}.png"
    if plot(results, png_path):
        written.append(png_path)
    return written


def open_step_line(step: dict[str, Any]) -> str:
    cpu = step.get("server_cpu_pct")
    return (
        f"  {step['rate']:g}/s: {step['arrivals']} chats, errors={step['errors']} "
        f"TTFT p50={_cell(step['ttft_ms']['p50'])} p95={_cell(step['ttft_ms']['p95'])} "
        f"total p95={_cell(step['total_ms']['p95'])} CPU={_cell(cpu)}% "
        f"-> {'sustained' if step['sustained'] else 'NOT sustained'}"
        + (f"  {step['error_kinds']}" if step.get("error_kinds") else "")
    )


def open_loop_table(results: dict[str, Any]) -> str:
    """The open loop: one line per configuration and rate, then the verdict per configuration."""
    lines = [
        "| server | db | rate/s | chats | errors | TTFT p50 | TTFT p95 | total p95 "
        "| arrival p95 | CPU % | sustained |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for entry in results.get("open_loop", []):
        for step in sorted(entry["steps"], key=lambda s: s["rate"]):
            lines.append(
                f"| {entry['server']} | {entry['database']} | {step['rate']:g} | "
                f"{step['arrivals']} | {step['errors']} | {_cell(step['ttft_ms']['p50'])} | "
                f"{_cell(step['ttft_ms']['p95'])} | {_cell(step['total_ms']['p95'])} | "
                f"{_cell((step.get('arrival_ms') or {}).get('p95'))} | "
                f"{_cell(step.get('server_cpu_pct'))} | {'yes' if step['sustained'] else 'no'} |"
            )
        verdicts.append(f"{entry['server']} on {entry['database']}: {open_verdict(entry)}")
    return "\n".join([*lines, "", *verdicts])


def open_verdict(entry: dict[str, Any]) -> str:
    rate = entry["sustained_rate"]
    limit = f"highest rate sustained with TTFT p95 <= {entry['ttft_p95_limit_ms']:g} ms: "
    if rate is None:
        return limit + "none (not even the lowest rate)"
    if all(step["sustained"] for step in entry["steps"]):
        return limit + f"at least {rate:g} chats/s (no rate tried failed: try higher rates)"
    return limit + f"{rate:g} chats/s"
