"""The bench's tables: each run as it happens, then per variant and phase over the rounds.

Figures over rounds are medians (throughput, p50, p99, ratios); CPU per request
is the total over rounds divided by the requests done. Ratios are to the
ceilings of the same round: throughput ratio = phase req/s / c2 req/s, latency
ratio = phase p99 / c2 p99, with c2 measured on the current variant.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict

from .cpu import GROUPS
from .load import PhaseResult

TITLES = {
    "c1": "DB ceiling: psycopg upsert, autocommit",
    "c2": "HTTP+verify ceiling: signed no-op -> 400",
    "ck": "fake Clerk alone: GET /v1/users/{id}",
    "a": "webhooks, distinct new users",
    "a2": "webhooks, 50% duplicates",
    "ad": "webhooks, user.deleted (new ids)",
    "b": "after-login, first login",
    "b2": "after-login, returning users",
}
RATIO_PHASES = ("a", "a2", "ad", "b", "b2")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}" if not math.isnan(seconds) else "n/a"


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def print_run(r: PhaseResult, round_no: int) -> None:
    flag = " (time limit hit)" if r.timed_out else ""
    statuses = ",".join(f"{k}:{v}" for k, v in sorted(r.statuses.items()))
    print(
        f"  round {round_no} {r.key:<3} {r.variant:<16} {r.done:>6} req {r.rps:>8.1f}/s p50 {ms(r.p50):>7} "
        f"p99 {ms(r.p99):>7} ms  cpu/req {sum(r.cpu_ms(g) for g in GROUPS):>6.2f} ms  "
        f"load {r.load_before.split()[0]}  [{statuses}]{flag}",
        flush=True,
    )


class Summary:
    """Every run of the bench, grouped by (variant, phase) and by round."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, PhaseResult]] = []

    def add(self, round_no: int, result: PhaseResult) -> None:
        self.runs.append((round_no, result))

    def _by(self) -> dict[tuple[str, str], list[tuple[int, PhaseResult]]]:
        grouped: dict[tuple[str, str], list[tuple[int, PhaseResult]]] = defaultdict(list)
        for round_no, r in self.runs:
            grouped[(r.variant, r.key)].append((round_no, r))
        return grouped

    def _ceiling(self, key: str, round_no: int, variant: str) -> PhaseResult | None:
        for n, r in self.runs:
            if n == round_no and r.key == key and r.variant == variant:
                return r
        return None

    def ratios(self, variant: str, key: str, ceiling_variant: str) -> tuple[float, float]:
        """Median over rounds of (throughput / c2 throughput, p99 / c2 p99)."""
        thr, p99 = [], []
        for round_no, r in self._by().get((variant, key), []):
            c2 = self._ceiling("c2", round_no, ceiling_variant)
            if c2 is None or not c2.done or not r.done:
                continue
            thr.append(r.rps / c2.rps)
            p99.append(r.p99 / c2.p99)
        return _median(thr), _median(p99)

    def print(self, variants: list[str], cores: int) -> None:
        grouped = self._by()
        ceiling_variant = variants[0]
        keys = [k for k in TITLES if any((v, k) in grouped for v in variants)]
        print()
        print("Summary over rounds (medians; CPU per request = totals / requests; ms):")
        head = (
            f"  {'phase':<38} {'variant':<16} {'req/s':>8} {'p50':>7} {'p99':>7} {'thr/c2':>7} {'p99/c2':>7} "
            + "".join(f"{g[:8]:>9}" for g in (*GROUPS, "others"))
            + f"{'ours':>8}"
        )
        print(head)
        print("  " + "-" * (len(head) - 2))
        for key in keys:
            for variant in variants:
                runs = [r for _, r in grouped.get((variant, key), [])]
                if not runs:
                    continue
                done = sum(r.done for r in runs)
                cpu = Counter()
                for r in runs:
                    cpu.update({g: r.cpu.get(g, 0.0) for g in (*GROUPS, "others")})
                per = {g: cpu[g] / done * 1000 if done else math.nan for g in cpu}
                thr, p99x = (
                    self.ratios(variant, key, ceiling_variant) if key in RATIO_PHASES else (math.nan,) * 2
                )
                ours = sum(per.get(g, 0.0) for g in GROUPS)
                print(
                    f"  {key + ' ' + TITLES[key]:<38.38} {variant:<16.16} "
                    f"{_median([r.rps for r in runs]):>8.1f} "
                    f"{ms(_median([r.p50 for r in runs])):>7} {ms(_median([r.p99 for r in runs])):>7} "
                    f"{_pct(thr):>7} {_x(p99x):>7} "
                    + "".join(f"{per.get(g, math.nan):>9.2f}" for g in (*GROUPS, "others"))
                    + f"{ours:>8.2f}"
                )
        print(
            "  (thr/c2: throughput as a share of the HTTP+verify ceiling c2 of the same round, measured\n"
            "   on"
            f" '{ceiling_variant}'; client = the load generator; engine = the query engines; postgres = the\n"
            f"   bench database's backends; others = the rest of the machine, {cores} cores)"
        )
        if len(variants) > 1:
            self._print_ab(variants, keys)

    def _print_ab(self, variants: list[str], keys: list[str]) -> None:
        new, old = variants[0], variants[1]
        grouped = self._by()
        print()
        print(
            f"A/B, '{new}' against '{old}', per round then median (throughput ratio; CPU per request ratio):"
        )
        for key in keys:
            rounds_new = dict(grouped.get((new, key), []))
            rounds_old = dict(grouped.get((old, key), []))
            thr, cpu = [], []
            for n, r in rounds_new.items():
                o = rounds_old.get(n)
                if o is None or not o.done or not r.done:
                    continue
                thr.append(r.rps / o.rps)
                total_new = sum(r.cpu_ms(g) for g in GROUPS if g != "client")
                total_old = sum(o.cpu_ms(g) for g in GROUPS if g != "client")
                cpu.append(total_new / total_old if total_old else math.nan)
            if thr:
                each = ", ".join(f"{t:.2f}" for t in thr)
                print(
                    f"  {key:<3} {TITLES[key]:<38} x{_median(thr):.2f} throughput ({each}); "
                    f"server CPU/request x{_median(cpu):.2f}"
                )


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%" if not math.isnan(value) else "-"


def _x(value: float) -> str:
    return f"{value:.1f}x" if not math.isnan(value) else "-"
