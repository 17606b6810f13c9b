"""`.venv/bin/python -m bench`: Release Pipeline beside what a user would otherwise run, one table.

  1. intake        wrk at our webhook endpoint (granian, as the Procfile serves it) and at
                   Debian's adnanh/webhook with a payload-hmac-sha256 rule running /bin/true
  2. push → URL    the busybox sample app through webhook → RQ worker → Docker → Caddy, beside
                   a naive script (clone, build, rm, run, poll), runs interleaved
  3. dropped       GET and POST loops against the URL during each of those deploys, both sides
  4. promote → URL a release tag → Stage serving the Demo image (no rebuild)
  5. scale         N apps × 3 phases, portal render times, RSS of web and worker processes
  6. notify        push → URL with a notification target that never answers, beside none
  7. swarm         push → URL, promote → URL and failed requests with RUNTIME=swarm on a
                   two-node swarm of private engines (bench.swarm), beside rows 2–4

Everything runs under its own instance name on free loopback ports, its own Redis database,
its own database and its own Caddy, and is stopped and removed at the end. The table goes to
stdout and to bench/results/latest.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.env import ROOT, BenchError, Env, free_port

RESULTS = ROOT / "bench" / "results"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: short wrk rounds, 3 deploy runs, 5 apps")
    parser.add_argument("--only", default="intake,deploy,scale,notify,swarm",
                        help="comma-separated parts to run: intake, deploy (2–4), scale, notify, swarm (default: all)")
    parser.add_argument("--runs", type=int, help="push → URL runs per side (default 10; quick 3)")
    parser.add_argument("--promote-runs", type=int, help="promote → URL runs (default 5; quick 2)")
    parser.add_argument("--notify-runs", type=int, help="notify runs per side (default 5; quick 2)")
    parser.add_argument("--apps", type=int, help="apps for the scale part (default 200; quick 5)")
    parser.add_argument("--workers", type=int, default=4,
                        help="RQ workers during the scale part (default 4; push → URL uses 1, as the Procfile)")
    parser.add_argument("--wrk-seconds", type=int, help="seconds per wrk round (default 10; quick 3)")
    parser.add_argument("--wrk-rounds", type=int, help="wrk rounds per side, alternating (default 2; quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7",
                        help="an otherwise unused Redis database (default redis://127.0.0.1:6379/7)")
    parser.add_argument("--postgres", metavar="ADMIN_URL",
                        help="use a fresh PostgreSQL database created via this URL (e.g. "
                             "postgresql://postgres@127.0.0.1:5432/postgres) instead of SQLite")
    parser.add_argument("--intake-databases", default="sqlite,postgresql",
                        help="databases the intake part (and its burst) runs on, in turn (default: both)")
    parser.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="where the intake part creates its PostgreSQL database (default: %(default)s)")
    parser.add_argument("--burst", type=int, help="deliveries in the intake burst (default 1000; quick 200)")
    parser.add_argument("--profile", action="store_true",
                        help="record each part's processes with py-spy into bench/results/profile-*.txt")
    parser.add_argument("--ports", metavar="LOW-HIGH",
                        help="take every port from this range (its upper half for the apps' slots), on a "
                             "machine shared with others")
    parser.add_argument("--keep", action="store_true", help="keep the bench's temporary directory (logs)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md", help="where to write the table")
    args = parser.parse_args(argv)
    quick = args.quick
    args.runs = args.runs or (3 if quick else 10)
    args.promote_runs = args.promote_runs if args.promote_runs is not None else (2 if quick else 5)
    args.apps = args.apps or (5 if quick else 200)
    args.notify_runs = args.notify_runs or (2 if quick else 5)
    args.wrk_seconds = args.wrk_seconds or (3 if quick else 10)
    args.wrk_rounds = args.wrk_rounds or (1 if quick else 2)
    args.burst = args.burst if args.burst is not None else (200 if quick else 1000)
    args.intake_databases = [d.strip() for d in args.intake_databases.split(",") if d.strip()]
    if not set(args.intake_databases) <= {"sqlite", "postgresql"}:
        parser.error("--intake-databases: sqlite and/or postgresql")
    if args.ports:
        from bench import env as bench_env

        low, _, high = args.ports.partition("-")
        if not (low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) - 8 <= 65535):
            parser.error("--ports: LOW-HIGH, e.g. 12000-15999")
        bench_env.PORTS = (int(low), int(high))
    problem = _ephemeral_problem(bench_env.PORTS if args.ports else None)
    if problem:
        parser.error(problem)
    args.parts = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = args.parts - {"intake", "deploy", "scale", "notify", "swarm"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def _ephemeral_problem(ports: tuple[int, int] | None) -> str | None:
    """Refused, not warned: in the kernel's ephemeral range, some slot ports are held by
    outgoing connections, and the scale part fails deployments with "port taken"."""
    from app.settings import Settings
    from app.slots import ephemeral_overlap, ephemeral_range

    if ports:
        return ephemeral_overlap("--ports", ports, ephemeral_range())
    low, _, high = Settings.model_fields["slot_ports"].default.partition("-")
    problem = ephemeral_overlap("the default SLOT_PORTS", (int(low), int(high)), ephemeral_range())
    return problem and f"{problem} (pass --ports LOW-HIGH)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> str:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    docker = first_line(["docker", "version", "--format", "{{.Server.Version}}"])
    caddy = first_line(["caddy", "version"]).split()[0]
    return f"Docker {docker}, Caddy {caddy}, Python {platform.python_version()}"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from bench import report

    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    RESULTS.mkdir(parents=True, exist_ok=True)
    profile_dir = args.output.parent if args.profile else None
    table = report.Table()
    failures = 0
    started = time.monotonic()
    load = os.getloadavg()
    database = (f"intake on {' and '.join(args.intake_databases)}; the other parts on "
                f"{'SQLite (WAL)' if not args.postgres else 'PostgreSQL'}")
    wrk_settings = (f"wrk -t{args.threads} -c{args.connections}, {args.wrk_rounds}×{args.wrk_seconds} s per side, "
                    "alternating")

    try:
        with Env(redis_url=args.redis_url, database=args.postgres or "sqlite", keep=args.keep,
                 postgres_admin=args.postgres_admin) as env:
            log(f"bench: instance {env.instance}, files in {env.home}")
            for intake_db in args.intake_databases if "intake" in args.parts else []:
                log(f"== 1. intake on {intake_db}")
                from bench import intake

                try:
                    result = intake.run(env, seconds=args.wrk_seconds, connections=args.connections,
                                        threads=args.threads, rounds=args.wrk_rounds, database=intake_db,
                                        burst=args.burst, profile_dir=profile_dir, log=log)
                    report.intake_rows(table, result, wrk_settings)
                except BenchError as exc:
                    failures += 1
                    log(f"bench: intake on {intake_db} failed: {exc}")
                    report.error_row(table, "1", f"intake ({intake_db})", str(exc))
            if args.parts & {"deploy", "scale", "notify"}:
                failures += _pipeline_parts(env, args, table, profile_dir)
            if "swarm" in args.parts:
                failures += _swarm_part(env, args, table)
    except BenchError as exc:
        log(f"bench: {exc}")
        return 2
    except KeyboardInterrupt:
        log("bench: interrupted; everything it started was stopped and removed")
        return 130

    header = (f"Release Pipeline bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
              f"`.venv/bin/python -m bench{' --quick' if args.quick else ''}`, commit {_git_revision()}; "
              f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at the end (a shared machine); {database}; {_versions()}; "
              f"took {(time.monotonic() - started) / 60:.1f} min.")
    text = header + "\n\n" + table.render() + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    log(f"bench: written to {args.output}")
    return 1 if failures else 0


def _pipeline_parts(env: Env, args, table, profile_dir: Path | None) -> int:
    """Parts 2–6 share one installation: Caddy, the web server, workers."""
    from bench import deploys, notify, report, scale
    from bench.deliveries import Sender

    failures = 0
    log("== starting the pipeline: Caddy, web (granian), worker")
    env.start_caddy()
    web_port = free_port()
    settings = env.settings_env(env.database_url("pipeline"), web_port)
    ctx = env.context(settings)
    ctx.db.migrate()
    ctx.router.ensure_server()
    web = env.start_web(settings, web_port)
    env.start_intake(settings)
    workers = [env.start_worker(settings, "worker-1")]
    # As the Procfile: notifications have a worker of their own.
    env.start_worker(settings, "notifier", queues="notifications")
    sender = Sender(f"http://127.0.0.1:{web_port}/api/github/webhooks", env.webhook_secret, ctx)

    if "deploy" in args.parts:
        log(f"== 2–4. push → URL ({args.runs} runs each, interleaved), dropped requests, promote → URL")
        recording = None
        if profile_dir is not None:
            from bench.profiling import Recording

            recording = Recording(workers[0].pid, profile_dir / "profile-deploy.txt")
        try:
            result = deploys.run(env, ctx, sender, runs=args.runs, promote_runs=args.promote_runs,
                                 naive_port=free_port(), log=log)
            report.deploy_rows(table, result)
            args.docker_deploys = result  # the swarm part's rows stand beside these
            _write_steps(result, args.output)
        except BenchError as exc:
            failures += 1
            log(f"bench: push → URL failed: {exc}")
            report.error_row(table, "2–4", "push → URL, dropped requests, promote → URL", str(exc))
        finally:
            if recording is not None:
                recording.stop()

    if "notify" in args.parts:
        log(f"== 6. push → URL with a dead notification target ({args.notify_runs} runs each side, alternating)")
        try:
            report.notify_rows(table, notify.run(env, ctx, sender, runs=args.notify_runs, log=log))
        except BenchError as exc:
            failures += 1
            log(f"bench: notify failed: {exc}")
            report.error_row(table, "6", "push → URL with a dead notification target", str(exc))

    if "scale" in args.parts:
        log(f"== 5. scale: {args.apps} apps × 3 phases with {args.workers} workers")
        for index in range(len(workers), args.workers):
            workers.append(env.start_worker(settings, f"worker-{index + 1}"))
        try:
            result = scale.run(env, ctx, sender, web, web_port, workers, apps=args.apps,
                               render_runs=10 if args.quick else 30, profile_dir=profile_dir, log=log)
            report.scale_rows(table, result)
        except BenchError as exc:
            failures += 1
            log(f"bench: scale failed: {exc}")
            report.error_row(table, "5", "scale", str(exc))
    return failures


def _swarm_part(env: Env, args, table) -> int:
    from bench import report, swarm

    log(f"== 7. RUNTIME=swarm on two nodes ({args.runs} push runs, {args.promote_runs} promotions)")
    try:
        result = swarm.run(env, runs=args.runs, promote_runs=args.promote_runs, log=log)
        swarm.rows(table, result, docker=getattr(args, "docker_deploys", None))
        return 0
    except BenchError as exc:
        log(f"bench: swarm failed: {exc}")
        report.error_row(table, "7", "RUNTIME=swarm: push → URL, promote → URL, failed requests", str(exc))
        return 1


def _write_steps(result, output: Path) -> None:
    """Per-run step timelines (seconds after the push), the profiling notes of parts 2 and 4,
    beside the results file (latest.md → latest-steps.txt)."""
    lines = []
    for name, runs in (("ours", result.ours), ("naive", result.naive), ("promote", result.promote)):
        for index, run in enumerate(runs):
            steps = ", ".join(f"{key} {value:.2f}" for key, value in sorted(run.steps.items(), key=lambda kv: kv[1]))
            lines.append(f"{name} {index + 1}: URL at {run.seconds:.2f} s; {steps}; "
                         f"failed GETs {run.failures} of {run.requests}, POSTs {run.post_failures} of {run.posts} "
                         f"{run.samples[:2]}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_name(f"{output.stem}-steps.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001 - say what broke, after cleanup already ran
        traceback.print_exc()
        sys.exit(2)
