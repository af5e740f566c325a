"""Percentiles, summaries, ratios, and how the report writes them.

Percentiles are nearest-rank everywhere: the value at rank ceil(q/100 * n)
of the sorted samples, so every number printed is one that was measured
(with 20 samples, "p99" is simply the maximum).
"""

from __future__ import annotations

import math

DASH = "—"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile q (0-100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summary(latencies_ns: list[int]) -> dict:
    """n, min, median, p90, p99 and max of latencies given in ns, in ms."""
    v = sorted(x / 1e6 for x in latencies_ns)
    return {
        "n": len(v),
        "min": v[0] if v else None,
        "median": percentile(v, 50),
        "p90": percentile(v, 90),
        "p99": percentile(v, 99),
        "max": v[-1] if v else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (a failed or skipped measurement)."""
    if a is None or b is None or b == 0:
        return None
    return a / b


# ---------------------------------------------------------------- formatting


def ms(v: float | None) -> str:
    """Milliseconds with the digits that matter: 0.123 ms, 12.3 ms, 123 ms."""
    if v is None or v != v:
        return DASH
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def us(ns: float | None) -> str:
    """Nanoseconds written as microseconds with one decimal."""
    return DASH if ns is None else f"{ns / 1000:.1f}"


def mb(kb: float | None) -> str:
    return DASH if kb is None or kb < 0 else f"{kb / 1024:.2f} MB"


def times(r: float | None) -> str:
    """A ratio: 1.23×, 12.3×, 123×."""
    if r is None:
        return DASH
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def thousands(v: float | None) -> str:
    """A rate in thousands: 735k."""
    return DASH if v is None else f"{v / 1000:,.0f}k"


def verdict(ok: bool | None) -> str:
    return DASH if ok is None else "met" if ok else "MISSED"


def at_most(r: float | None, target: float) -> str:
    """Verdict of a ratio that must stay at or below target, with the overshoot."""
    if r is None:
        return DASH
    return "met" if r <= target else f"MISSED (+{100 * (r / target - 1):.0f}%)"


def at_least(r: float | None, target: float) -> str:
    if r is None:
        return DASH
    return "met" if r >= target else f"MISSED (−{100 * (1 - r / target):.0f}%)"


# A ratio within this fraction of its target is "at the target": met, not
# a miss (nor a win).
NOISE = 0.05


def middle(values) -> float | None:
    """The median of the values that were measured (None when none was)."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    n = len(known)
    return known[n // 2] if n % 2 else (known[n // 2 - 1] + known[n // 2]) / 2


def judged(r: float | None, target: float, most: bool = True) -> str:
    """The verdict on a ratio that must stay at or below target (most) or
    at or above it, with the noise band: within NOISE of the target on the
    wrong side reads "met (at the target …)"."""
    if r is not None and (target < r <= target * (1 + NOISE) if most else target * (1 - NOISE) <= r < target):
        return f"met (at the target: {100 * (r / target - 1):+.0f}%, within the {NOISE:.0%} noise band)"
    return at_most(r, target) if most else at_least(r, target)


def latency_cells(s: dict) -> list[str]:
    """n, median, p90, p99, max of a summary(), as table cells."""
    return [str(s["n"]), ms(s["median"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"])]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, columns padded so that it also reads as plain text."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])
