"""clerk-sync benchmark: webhooks and after-login against ceilings measured in the same run.

    scripts/bench                        # all phases, 3 interleaved rounds (a few minutes)
    scripts/bench --compare main         # the same, with main's app interleaved as a second variant
    scripts/bench --profile              # plus where one webhook's time goes (Python and Node)
    scripts/bench --help

Modules: load (wrk or Python threads), ceilings (c1 DB, c2 HTTP+verify),
workload (the prepared requests), services (database, fake Clerk, servers,
--compare worktree), cpu (CPU per process group), report (tables), profile
and engine_profile (one webhook, split).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from prisma_engines import engines, localdb
from tests.fakeclerk import DEFAULT_AZP

from . import ceilings, load, report, services, workload
from .cpu import CpuMeter
from .engine_profile import run_engine_profile
from .load import PhaseResult, loadavg
from .profile import run_profile

PHASES = ("c1", "c2", "ck", "a", "a2", "ad", "b", "b2")
# Phases whose requests (and warm-up) are n fresh signed webhooks of one kind.
WEBHOOK_PHASES = {"c2": workload.noop_requests, "a": workload.user_events, "ad": workload.deletion_events}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--compare", metavar="REV", help="also run REV's app (a git revision), interleaved")
    parser.add_argument("--load", choices=("wrk", "python"), help="load generator (default: wrk if found)")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections (default 8)")
    parser.add_argument("--requests", type=int, default=1500, help="requests per webhook/ceiling phase")
    parser.add_argument("--login-requests", type=int, default=600, help="requests per after-login phase")
    parser.add_argument("--db-ceiling-requests", type=int, default=5000, help="upserts in c1")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per phase")
    parser.add_argument(
        "--phase-timeout", type=float, default=30.0, help="max seconds per phase (default 30)"
    )
    parser.add_argument("--dup-lag", type=int, default=16, help="positions between a message and its copy")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    parser.add_argument("--workers", type=int, help="server workers (WEB_CONCURRENCY)")
    parser.add_argument("--threads", type=int, help="threads per worker (GUNICORN_THREADS)")
    parser.add_argument(
        "--profile", action="store_true", help="also split one webhook (Python stages, Node CPU)"
    )
    parser.add_argument("--profile-only", action="store_true", help="only the profile, no load phases")
    parser.add_argument("--profile-requests", type=int, default=300, help="webhooks per profile pass")
    parser.add_argument("--postgres-url", help="PostgreSQL server URL (default: prisma_engines.localdb)")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.load is None:
        args.load = "wrk" if load.wrk_available() else "python"
    if args.load == "wrk" and not load.wrk_available():
        parser.error("wrk is not installed (scripts/bench installs it)")
    if args.profile_only:
        args.profile, args.phases = True, []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    if not env.get("PRISMA_QUERY_ENGINE_BINARY"):
        env.update(engines.offline_env())
        os.environ.update(engines.offline_env())
    env.pop("LOG_QUERIES", None)
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    if args.threads:
        env["GUNICORN_THREADS"] = str(args.threads)
    server_url = args.postgres_url or localdb.server_url()
    n_variants = 2 if args.compare else 1
    per_round_logins = args.login_requests + args.warmup
    login_users = per_round_logins * args.rounds * n_variants if {"b", "b2"} & set(args.phases) else 1

    print(f"clerk-sync bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cores} CPUs, load average {loadavg()}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clerk-sync-bench-")))
        db_name, db_url = stack.enter_context(services.bench_database(server_url))
        fake, fake_pid = stack.enter_context(services.fake_clerk_process(login_users, token_ttl=3600))
        env.update(
            DATABASE_URL=db_url,
            CLERK_API_URL=fake["url"],
            CLERK_SECRET_KEY=fake["secret_key"],
            CLERK_AUTHORIZED_PARTIES=DEFAULT_AZP,
            CLERK_WEBHOOK_SIGNING_SECRET=workload.WEBHOOK_SECRET,
        )
        variants = [services.current_variant()]
        if args.compare:
            variants.append(stack.enter_context(services.revision_worktree(args.compare, tmp)))
        servers = [
            stack.enter_context(services.serve(v, env, tmp / f"server-{i}.log"))
            for i, v in enumerate(variants)
        ]
        meter = CpuMeter(server_url, db_name, servers=[s.pid for s in servers], fakeclerk_pid=fake_pid)
        for s in servers:
            print(f"server '{s.variant.name}' ({s.variant.revision}) at {s.url}, from {s.variant.root}")
        print(f"database {db_name}; fake Clerk at {fake['url']}")
        print(
            f"load: {args.load}, {args.connections} keep-alive connections; {args.requests} requests per "
            f"webhook phase, {args.login_requests} per after-login phase, {args.warmup} warm-up each; "
            f"{args.rounds} rounds"
        )
        run_phase = load.runner(args.load)
        common = {"connections": args.connections, "time_limit": args.phase_timeout, "meter": meter}
        summary = report.Summary()
        tokens = iter(fake["tokens"])
        ids = fake["ids"]

        def http(
            key: str, server: services.Server, requests: list, warmup: list, base_url: str | None = None
        ) -> None:
            result = PhaseResult(key, report.TITLES[key], server.variant.name, len(requests))
            run_phase(result, base_url or server.url, requests, warmup, **common)
            summary.add(round_no, result)
            report.print_run(result, round_no)

        for round_no in range(1, args.rounds + 1 if args.phases else 1):
            print(f"\nround {round_no}, load average {loadavg()}", flush=True)
            order = servers if round_no % 2 else servers[::-1]
            logins = {
                s.variant.name: (
                    workload.login_requests([next(tokens) for _ in range(args.warmup)]),
                    workload.login_requests([next(tokens) for _ in range(args.login_requests)]),
                )
                for s in order
            } if {"b", "b2"} & set(args.phases) else {}  # fmt: skip
            for key in args.phases:
                if key == "c1":
                    n = args.db_ceiling_requests
                    result = PhaseResult("c1", report.TITLES["c1"], "-", n)
                    ceilings.run_db_ceiling(
                        result,
                        db_url,
                        n,
                        clients=args.connections,
                        time_limit=args.phase_timeout,
                        meter=meter,
                    )
                    summary.add(round_no, result)
                    report.print_run(result, round_no)
                    continue
                if key == "ck":
                    secret = {"Authorization": f"Bearer {fake['secret_key']}"}
                    gets = [workload.Req("GET", f"/v1/users/{i}", b"", secret) for i in ids[: args.requests]]
                    result = PhaseResult("ck", report.TITLES["ck"], "-", len(gets))
                    run_phase(result, fake["url"], gets, gets[: args.warmup], **common)
                    summary.add(round_no, result)
                    report.print_run(result, round_no)
                    continue
                for server in order:
                    if key in WEBHOOK_PHASES:
                        make = WEBHOOK_PHASES[key]
                        http(key, server, make(args.requests), make(args.warmup))
                    elif key == "a2":
                        pairs = workload.with_duplicates(
                            workload.user_events(args.requests // 2), args.dup_lag
                        )
                        http(key, server, pairs, workload.user_events(args.warmup))
                    elif key in ("b", "b2"):
                        warm, measured = logins[server.variant.name]
                        http(key, server, measured, warm)

        if summary.runs:
            summary.print([v.name for v in variants], cores)
        if args.profile:
            run_profile(db_url, servers[0].url, args.profile_requests, tmp, meter)
            run_engine_profile(db_url, args.profile_requests, tmp)
        print(
            f"\nload average at end: {loadavg()}; bench took {time.monotonic() - started:.0f} s (cleaning up)"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted (servers stopped, database dropped)", file=sys.stderr)
        sys.exit(130)
