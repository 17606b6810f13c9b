"""What the command line prints, decided from API answers alone (pure: tested by equality)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from app.humanize import ago_words

DASH = "-"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell; empty cells as a dash."""
    cells = [[DASH if value in (None, "") else str(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def ago(iso: str | None, now: datetime | None = None) -> str | None:
    """`2026-12-01T20:00:00Z` as "5 min ago" (the portal's wording)."""
    if not iso:
        return None
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return ago_words(((now or datetime.now(timezone.utc)) - moment).total_seconds())


def apps_table(body: dict) -> str:
    phases = body.get("phases", [])
    rows = []
    for app in body.get("apps", []):
        row = [app["name"], app.get("repository")]
        for phase in phases:
            state = app["phases"].get(phase) or {}
            version = state.get("version")
            cell = f"{version} ({state.get('health')})" if version else None
            if state.get("in_progress"):
                cell = f"{cell or DASH} → {state['in_progress']}"
            row.append(cell)
        rows.append(row)
    if not rows:
        return "no apps you can see (install the GitHub App on a repository first)"
    return table(["APP", "REPOSITORY", *[p.upper() for p in phases]], rows)


def status_table(body: dict, now: datetime | None = None) -> str:
    rows = []
    for phase in body["phases"]:
        current, moving = phase.get("current") or {}, phase.get("in_progress") or {}
        rows.append([phase["name"], current.get("version"), (current.get("sha") or "")[:7],
                     phase["health"]["label"], phase.get("url"),
                     ago(current.get("finished_at"), now), current.get("actor"),
                     f"{moving['version']} ({moving['status']}, #{moving['id']})" if moving else None])
    head = f"{body['name']} ({body['repository']}), your role: {body.get('your_role', DASH)}"
    return head + "\n\n" + table(["PHASE", "VERSION", "SHA", "HEALTH", "URL", "DEPLOYED", "BY", "IN PROGRESS"],
                                 rows)


def history_table(deployments: list[dict], now: datetime | None = None) -> str:
    if not deployments:
        return "no deployments yet"
    return table(["ID", "VERSION", "SHA", "STATUS", "TRIGGER", "BY", "QUEUED", "REASON"], [
        [d["id"], d["version"], (d.get("sha") or "")[:7], d["status"], d.get("trigger"), d.get("actor"),
         ago(d.get("queued_at"), now), d.get("reason")] for d in deployments])


def log_line(data: dict) -> str:
    return f"[{data.get('stream', 'log')}] {data.get('text', '')}"


def moment(at: str) -> float:
    """The unix time of one of the server's ISO times (`2026-12-02T04:30:00.123456Z`)."""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def output_line(line: dict) -> str:
    """`<time> [app] text`, or the backing service's name for its lines."""
    return f"{line.get('at', '')} [{line.get('source', 'app')}] {line.get('text', '')}"


def output_lines(sources: list[dict]) -> str:
    """Each source's last lines under its name; a source not running says so."""
    if not sources:
        return "nothing runs on this phase"
    parts = []
    for source in sources:
        state = "" if source.get("running") else " (not running)"
        shown = [output_line(line) for line in source["lines"]] or ["(no output yet)"]
        parts.append("\n".join([f"== {source['label']}{state}", *shown]))
    return "\n\n".join(parts)


def seconds(value: float) -> str:
    return f"{value:6.1f}s"


@dataclass
class Progress:
    """Turns a deployment's live-log events into progress lines: each status change and each
    rollout step (the `deploy` stream), with the time since the command asked. Build output
    is left to `logs`: a build can print thousands of lines."""

    shown_status: str | None = None
    last_text: str | None = None

    def lines(self, kind: str, data: dict, elapsed: float) -> list[str]:
        if kind == "line" and data.get("stream") != "build":
            return self._say(data.get("text", ""), elapsed)
        if kind == "status" and data.get("status") != self.shown_status:
            self.shown_status = data.get("status")
            return self._say(self.shown_status, elapsed)
        if kind == "done":
            return [outcome(data, elapsed)]
        return []

    def _say(self, text: str, elapsed: float) -> list[str]:
        """A step; the rollout's own "succeeded" line and the status change say it only once."""
        if text == self.last_text:
            return []
        self.last_text = text
        return [f"{seconds(elapsed)}  {text}"]


def outcome(data: dict, elapsed: float | None = None) -> str:
    took = f" after {elapsed:.1f}s" if elapsed is not None else ""
    status = data.get("status")
    if status == "succeeded":
        return f"succeeded{took}: serving at {data.get('url') or 'its phase URL'}"
    reason = data.get("reason")
    return f"{status}{took}" + (f": {reason}" if reason else "")
