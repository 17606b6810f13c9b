"""The one table: both sides of every comparison, from one run, with the targets."""

from __future__ import annotations

import os
import statistics

from bench.deploys import DeployResults
from bench.intake import split_text
from bench.notify import EVENTS, NotifyResults
from bench.scale import ScaleResults, summary


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "no"


def _spread(values: list[float]) -> str:
    return f"{_s(statistics.median(values))} ({min(values):.2f}–{max(values):.2f})"


class Table:
    def __init__(self):
        self.rows: list[tuple[str, ...]] = []

    def add(self, part: str, measure: str, ours: str, peer: str = "", ratio: str = "", target: str = "",
            met: str = "") -> None:
        self.rows.append((part, measure, ours, peer, ratio, target, met))

    def render(self) -> str:
        head = ("#", "measure", "Release Pipeline", "peer / naive", "ratio", "target", "met")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


def intake_rows(table: Table, result, settings: str) -> None:
    ours, peer, counts, db = result["ours"], result["peer"], result["counts"], result["database"]
    table.add("1", f"intake requests/s on {db} ({settings}; one signed push, distinct delivery ids)",
              f"{ours.rps:,.0f}", f"{peer.rps:,.0f} (adnanh/webhook 2.8 → /bin/true)",
              f"{ours.rps / peer.rps:.2f}×", "≥ 1× peer", _yes(ours.rps >= peer.rps))
    table.add("1", f"intake latency p50 / p99 ({db})", f"{ours.p50_ms:.1f} / {ours.p99_ms:.1f} ms",
              f"{peer.p50_ms:.1f} / {peer.p99_ms:.1f} ms", f"p99 {ours.p99_ms / max(peer.p99_ms, 1e-9):.2f}×",
              "p99 ≤ 50 ms", _yes(ours.p99_ms <= 50))
    table.add("1", f"intake CPU per request ({db}; web server main + workers / webhook + its /bin/true), "
              "then the drainer's per delivery", f"{ours.cpu_ms_per_request:.2f} ms + {result['drainer_cpu_ms']:.2f} ms",
              f"{peer.cpu_ms_per_request:.2f} ms",
              f"{ours.cpu_ms_per_request / max(peer.cpu_ms_per_request, 1e-9):.1f}×", "(measured)", "")
    table.add("1", f"intake CPU seconds while wrk ran ({db}; all rounds, by process, of the cores' "
              f"{ours.seconds * os.cpu_count():.0f} s per side)", split_text(ours), split_text(peer), "",
              "(measured)", "")
    table.add("1", f"intake errors ({db}; non-2xx + socket errors)", f"{ours.errors} of {ours.requests:,}",
              f"{peer.errors} of {peer.requests:,}", "", "0", _yes(ours.errors == 0))
    done = counts["deliveries"] >= ours.expected and counts["deployments"] >= ours.expected \
        and counts["jobs"] >= ours.expected and not counts["set_aside"]
    table.add("1", f"intake work done ({db}; 202s answered → rows and jobs, recorded by the drainer)",
              f"{ours.expected:,} → {counts['deliveries']:,} deliveries, {counts['deployments']:,} queued "
              f"deployments, {counts['jobs']:,} deploy jobs, {counts['set_aside']} set aside; the last recorded "
              f"{result['drain_seconds']:.1f} s after the last answer", "runs /bin/true", "",
              "every 202 recorded + queued", _yes(done))
    burst = result["burst"]
    if burst is not None:
        table.add("1", f"intake burst ({db}): {burst.deliveries:,} deliveries at once from 64 connections",
                  f"{burst.answered_202:,} answered 202 in {burst.seconds:.1f} s, slowest {burst.slowest_ms:.0f} ms "
                  f"(p99 {burst.p99_ms:.0f} ms); {burst.recorded:,} recorded, the last "
                  f"{burst.recorded_after_s:.1f} s after the last answer", "", "",
                  "every one 202 in < 1 s, all recorded", _yes(burst.met))


def deploy_rows(table: Table, result: DeployResults, promote_target: float = 0.5) -> None:
    ours, naive = [r.seconds for r in result.ours], [r.seconds for r in result.naive]
    ratio = statistics.median(ours) / statistics.median(naive)
    table.add("2", f"push → URL serves the new commit, median of {len(ours)} (min–max)", _spread(ours),
              f"{_spread(naive)} (clone, build, rm, run, poll)", f"{ratio:.2f}×", "≤ 0.9× naive", _yes(ratio <= 0.9))
    table.add("3", f"failed GETs / POSTs during those {len(ours)} deploys (two loops, a new connection each; "
              "POST: 512 bytes to a 200 ms CGI)", _failed(result.ours), _failed(result.naive), "", "ours 0 / 0",
              _yes(_failures(result.ours) == 0))
    if result.promote:
        promote = [r.seconds for r in result.promote]
        table.add("4", f"promote → URL (release tag → Stage serves the Demo image), median of {len(promote)} "
                  "(min–max)", _spread(promote), "", "",
                  f"≤ {promote_target} s, no rebuild",
                  _yes(statistics.median(promote) <= promote_target and result.rebuilt_on_promote == 0))
        table.add("4", "promotions that rebuilt; failed GETs / POSTs during them",
                  f"{result.rebuilt_on_promote}; {_failed(result.promote)}", "", "", "0; 0 / 0",
                  _yes(result.rebuilt_on_promote == 0 and _failures(result.promote) == 0))


def _failed(runs) -> str:
    gets, posts = sum(r.requests for r in runs), sum(r.posts for r in runs)
    return (f"{sum(r.failures for r in runs)} of {gets:,} / "
            f"{sum(r.post_failures for r in runs)} of {posts:,}")


def _failures(runs) -> int:
    return sum(r.failures + r.post_failures for r in runs)


def notify_rows(table: Table, result: NotifyResults) -> None:
    with_target, without = [r.seconds for r in result.with_target], [r.seconds for r in result.without]
    table.add("6", f"push → URL with a notification target that never answers ({len(EVENTS)} deployment events, "
              f"{result.timeout:g} s timeout per attempt), median of {len(with_target)} (min–max), alternating",
              _spread(with_target), f"{_spread(without)} (no target)", f"{result.ratio:.2f}×", "≤ 1.1× without",
              _yes(result.ratio <= 1.1))
    failed = sum(r.failures for r in result.with_target)
    table.add("6", "failed requests during the deploys with the dead target / notifications delivered to it",
              f"{failed} of {sum(r.requests for r in result.with_target):,} / {result.delivered} of "
              f"{result.notifications}", "", "", "0 / 0", _yes(failed == 0 and result.delivered == 0))


def scale_rows(table: Table, result: ScaleResults) -> None:
    total = sum(result.deploy_seconds.values())
    parts = ", ".join(f"{name} {_duration(sec)}" for name, sec in result.deploy_seconds.items())
    table.add("5", f"deploy {result.apps} apps × 3 phases ({result.deployments} deployments, "
              f"{result.workers} workers; {result.containers} containers running after)",
              f"{_duration(total)} ({parts})", "", "", "all succeed", _yes(not result.failed))
    if result.failed:
        table.add("5", f"deployments that failed ({len(result.failed)} of {result.deployments})",
                  f"first: {result.failed[0][:300]}", "", "", "0", "no")
    for label, times in result.render.items():
        median, p95 = summary(times)
        table.add("5", f"render {label}, median / p95 of {len(times)}", f"{_ms(median)} / {_ms(p95)}", "", "",
                  "p95 < 100 ms", _yes(p95 < 0.1))
    rss = result.rss
    web = rss.get("web worker", 0.0)
    table.add("5", f"peak RSS per web process: worker / main ({result.rss_samples} samples while "
              "deploying, then rendering)", f"{web:.0f} / {rss.get('web master', 0):.0f} MiB", "", "",
              "≤ 150 MiB", _yes(0 < web <= 150 and rss.get("web master", 0) <= 150))
    worker = max(rss.get("worker", 0.0), rss.get("work horse", 0.0))
    table.add("5", "peak RSS per worker: RQ worker / its work horse (forked per job)",
              f"{rss.get('worker', 0):.0f} / {rss.get('work horse', 0):.0f} MiB", "", "", "≤ 200 MiB",
              _yes(0 < worker <= 200))
    if result.caddy_cpu_percent is not None:
        table.add("5", f"at rest after, 5 s: Caddy routing {result.deployments} phases (passive health checks "
                  "only); whole host busy (other users included)",
                  f"Caddy {result.caddy_cpu_percent:.1f} % of one core; host {result.host_busy_percent:.0f} % "
                  f"of {os.cpu_count()} CPUs", "", "", "Caddy ≤ 5 % of a core",
                  _yes(result.caddy_cpu_percent <= 5))


def error_row(table: Table, part: str, what: str, error: str) -> None:
    table.add(part, what, f"**failed**: {error.splitlines()[0][:300]}", "", "", "", "no")
