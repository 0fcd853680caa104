"""Structured logs: a function's ``log_format``/``log_level``, log filters, the platform's log.

A function's lines reach the platform as text: what it printed, and what the ``logging`` module
wrote through the runtime's handler as ``[LEVEL]\\t<timestamp>\\t<request id>\\t<message>``.
With ``log_format = "json"`` every line becomes one JSON object in Lambda's JSON log format::

    {"timestamp": "2024-05-01T12:00:00.123Z", "level": "INFO", "requestId": "...",
     "message": "..."}

and the platform's START / END / REPORT lines become ``{"time", "type": "platform.start" |
"platform.end" | "platform.report", "record": {"requestId", "message"}}``. A printed line that is
already a JSON object keeps its fields (its ``level`` counts for filtering, like Lambda).
``log_level`` drops application lines below it; a line without a level counts as INFO.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40,
          "CRITICAL": 50, "FATAL": 50}
_RECORD = re.compile(r"^\[([A-Z]+)\]\t(\S+)\t([^\t]*)\t(.*)$", re.S)
_PLATFORM = {"START": "platform.start", "END": "platform.end", "REPORT": "platform.report"}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def level_of(line: str) -> str | None:
    """The level a line carries: a runtime log record, a JSON object with ``level``, a JSON
    platform line (None), or plain text (None)."""
    m = _RECORD.match(line)
    if m:
        return m.group(1)
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if isinstance(obj, dict) and isinstance(obj.get("level"), str):
            return str(obj["level"]).upper()
    return None


def _app_line(line: str, rid: str, now: float) -> tuple[dict[str, Any], str]:
    m = _RECORD.match(line)
    if m:
        level, ts, _rid, message = m.groups()
        return {"timestamp": ts, "level": level, "requestId": rid, "message": message}, level
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            level = str(obj.get("level", "INFO")).upper()
            return {"timestamp": _iso(now), "level": level, "requestId": rid, **obj}, level
    return {"timestamp": _iso(now), "level": "INFO", "requestId": rid, "message": line}, "INFO"


def apply(block: list[str], rid: str, log_format: str, log_level: str | None,
          now: float) -> list[str]:
    """One invocation's lines (START ... REPORT framing included) in the function's format."""
    floor = LEVELS.get(log_level or "", 0)
    out: list[str] = []
    for line in block:
        head = line.split(" ", 1)[0]
        if head in _PLATFORM and (" RequestId: " in line or line.startswith(f"{head} RequestId")):
            if log_format == "json":
                out.append(json.dumps({"time": _iso(now), "type": _PLATFORM[head],
                                       "record": {"requestId": rid, "message": line}}))
            else:
                out.append(line)
            continue
        obj, level = _app_line(line, rid, now)
        if LEVELS.get(level, 20) < floor:
            continue
        out.append(json.dumps(obj, default=str) if log_format == "json" else line)
    return out


def matches(line: dict[str, Any], *, since: float = 0.0, grep: str | None = None,
            level: str | None = None) -> bool:
    """For ``squall logs --since --grep --level``: ``level`` keeps lines at or above it (lines
    without a level count as INFO, platform lines are kept only without a level filter)."""
    if line.get("ts", 0.0) < since:
        return False
    text = str(line.get("line", ""))
    if grep and grep not in text:
        return False
    if level:
        found = level_of(text)
        if found is None and text.startswith("{") and '"type": "platform.' in text:
            return False
        if found is None and text.split(" ", 1)[0] in _PLATFORM:
            return False
        return LEVELS.get(found or "INFO", 20) >= LEVELS.get(level.upper(), 0)
    return True


def line_filter(since: str | None, grep: str | None,
                level: str | None) -> Callable[[dict[str, Any]], bool] | None:
    """The CLI's ``--since --grep --level`` as one predicate, or None without filters.
    Raises click.BadParameter (a usage error) for a bad duration or level."""
    if not (since or grep or level):
        return None
    import time

    import click

    start = 0.0
    if since:
        try:
            start = time.time() - _seconds(since)
        except ValueError:
            raise click.BadParameter(f"{since!r} is not a duration like 30s, 10m, 2h, 1d",
                                     param_hint="--since") from None
    if level and level.upper() not in LEVELS:
        raise click.BadParameter(f"use one of {', '.join(LEVELS)}", param_hint="--level")
    return lambda line: matches(line, since=start, grep=grep, level=level)


def _seconds(raw: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    if not raw or raw[-1] not in units:
        raise ValueError(raw)
    amount = float(raw[:-1])
    if not amount >= 0:
        raise ValueError(raw)
    return amount * units[raw[-1]]


class JSONFormatter(logging.Formatter):
    """The platform's own log as JSON lines: time, level, logger, message (+ exception), and
    with ``--workers`` the worker that wrote it."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if self.worker is not None:
            out["worker"] = self.worker
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(log_format: str, level: str, worker: int | None = None) -> None:
    """``squall up``'s logging: text as before, or JSON lines when log_format is "json";
    ``worker`` (with ``--workers``) names the gateway process in every line."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter(worker))
    else:
        who = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
