"""py-spy's collapsed stacks (``--format raw``) summarised: where the server's time goes.

Shares are of the samples py-spy took of running threads: "inclusive" counts a function
when it is anywhere on the stack, "self" when it is the frame running. py-spy's own idle
detection does not catch every wait here (the event loop's epoll, the thread pool's queue),
so stacks that end in those waits are left out and counted apart.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
PROJECT = ("conversations/", "chatsite/")
AREAS = (
    ("project", PROJECT),
    ("django templates", ("django/template/",)),
    ("django db", ("django/db/", "sqlite3/", "psycopg/")),
    ("django other", ("django/",)),
    ("channels/asgiref", ("channels/", "channels_redis/", "asgiref/", "redis/", "msgpack/")),
    ("daphne/twisted/autobahn", ("daphne/", "twisted/", "autobahn/", "txaio/", "zope/")),
    ("httpx/httpcore/h11/anyio", ("httpx/", "httpcore/", "h11/", "anyio/", "sniffio/")),
    ("uvicorn/websockets", ("uvicorn/", "websockets/", "wsproto/")),
    ("markdown/nh3/pygments", ("markdown_it/", "nh3/", "pygments/", "mdurl/")),
    ("asyncio/threads", ("asyncio/", "concurrent/", "threading.py", "selectors.py", "queue.py")),
    ("json", ("json/",)),
)


# (file, function) of a leaf frame that is a thread waiting, not working.
WAITS = {
    ("selectors.py", "EpollSelector.select"),
    ("selectors.py", "PollSelector.select"),
    ("concurrent/futures/thread.py", "_worker"),
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("queue.py", "Queue.get"),
}


def _parse(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["path"]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for prefix in PROJECT:
        index = path.find("/" + prefix)
        if index >= 0:
            return path[index + 1 :]
    return path


def _area(path: str) -> str:
    for area, prefixes in AREAS:
        if any(path.startswith(prefix) or f"/{prefix}" in path for prefix in prefixes):
            return area
    return "other"


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    total = 0
    waiting = 0
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    project_inclusive: collections.Counter[str] = collections.Counter()
    project_self: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_parse(f) for f in stack.split(";")]
        if (_short(frames[-1][1]), frames[-1][0]) in WAITS:
            waiting += count
            continue
        total += count
        names = [(f"{_short(path)}:{func}", _short(path)) for func, path in frames]
        leaf_name, leaf_path = names[-1]
        self_time[leaf_name] += count
        areas[_area(leaf_path)] += count
        for name in {name for name, _ in names}:
            inclusive[name] += count
        project_frames = [name for name, path in names if path.startswith(PROJECT)]
        for name in set(project_frames):
            project_inclusive[name] += count
        # Time below a project frame that is not itself in the project: charge its
        # nearest project caller ("self" including the libraries it calls directly).
        if project_frames:
            project_self[project_frames[-1]] += count
    if not total:
        return {}

    def share(count: int) -> float:
        return round(100 * count / total, 1)

    top_project = [
        {
            "function": name,
            "inclusive_pct": share(count),
            "own_pct": share(project_self[name]),
        }
        for name, count in project_inclusive.most_common(top)
    ]
    lines = [
        f"py-spy: {total} samples of working server threads "
        f"({waiting} more of threads waiting in epoll or the thread pool's queue, left out)",
        "",
        "by area (leaf frame):",
    ]
    lines += [f"  {share(count):5.1f}%  {area}" for area, count in areas.most_common()]
    lines += ["", "project functions (inclusive %, own % = itself + libraries it calls directly):"]
    lines += [
        f"  {item['inclusive_pct']:5.1f}%  {item['own_pct']:5.1f}%  {item['function']}"
        for item in top_project
    ]
    lines += ["", "leaf functions (self %):"]
    lines += [f"  {share(count):5.1f}%  {name}" for name, count in self_time.most_common(top)]
    return {
        "samples": total,
        "waiting_samples": waiting,
        "areas": {area: share(count) for area, count in areas.most_common()},
        "top": top_project,
        "leaves": [
            {"function": name, "self_pct": share(count)}
            for name, count in self_time.most_common(top)
        ],
        "text": "\n".join(lines) + "\n",
    }
