"""users: restart latency of a `spawn` group whose children run as another
user (`user = "nobody"`, plus `rlimits`) against the same group without.

The user switch happens in drover's own vfork-style child (raw setgroups,
setresgid, setresuid before execve), so it should cost a few system calls,
not a different start path. Needs drover to run as root (the bench's own
user); otherwise the suite reports it skipped.
"""

from __future__ import annotations

import os
import time

from lib.harness import GAP_MS, RESTARTS
from lib.load import QUIET_PCT, OthersCpu
from lib.stamps import run_probe
from lib.stats import latency_cells, ms, ratio, summary, table, times, verdict

TITLE = "Users and limits: restart latency of a spawn child run as another user"
NEEDS = ("stamp", "probe")
OPTIONS = [RESTARTS, GAP_MS]

# name -> extra lines of the group
VARIANTS = {
    "plain": "",
    "user": 'user = "nobody"\n',
    "user+rlimits": 'user = "nobody"\nrlimits = { nofile = 1024, core = 0 }\n',
}
# Rounds alternate the variants, so that a drift of the machine during the
# suite does not land on one of them.
ROUNDS = 2
GOAL_RATIO = 1.2


def run(ctx) -> dict:
    r: dict = {"latencies": {name: [] for name in VARIANTS},
               "others_by_variant": {name: [] for name in VARIANTS}}
    if os.geteuid() != 0:
        r["skipped"] = "drover runs as root only there: switching users needs it"
        ctx.note(r["skipped"])
        return r
    n = max(1, ctx.opts.restarts // ROUNDS)
    for round_ in range(ROUNDS):
        for name, extra in VARIANTS.items():
            ctx.step(f"round {round_ + 1}/{ROUNDS}, {name}: restart latency x{n}")
            d = ctx.stamp_drover(f"{name}-{round_}", 1, start_method="spawn")
            d.config.write_text(d.config.read_text() + extra)
            # The children append to the stamps file as `nobody`.
            os.chmod(d.stamps, 0o666)
            others = OthersCpu()
            d.start()
            d.wait_stamps(1, 60)
            time.sleep(0.2)
            d.alive()
            lat, _ = run_probe(ctx.bins["probe"], ["kill", n, d.dir, 5000, ctx.opts.gap_ms], timeout=600)
            d.alive()
            d.stop()
            r["latencies"][name] += lat
            r["others_by_variant"][name].append(others.pct())
    r["summary"] = {name: summary(lat) for name, lat in r.pop("latencies").items()}
    return r


def report(r: dict, header: dict) -> list[str]:
    if r.get("skipped"):
        return [f"Skipped: {r['skipped']}."]
    s = r["summary"]
    base = s["plain"]["median"]
    out = [
        'drover with one `stamp` child (`start_method = "spawn"`, `restart = "always"`), as is, with',
        '`user = "nobody"`, and with `user` and `rlimits = { nofile = 1024, core = 0 }`: SIGKILL of the',
        f"running child → its replacement's stamp, {ROUNDS} rounds alternating the variants.",
        "",
    ]
    rows = []
    for name in VARIANTS:
        busy = others_cell(max(r["others_by_variant"][name], default=None))
        rows.append([f"`{name}`", *latency_cells(s[name]), times(ratio(s[name]["median"], base)), busy])
    out.append(table(["", "n", "median", "p90", "p99", "max", "median / plain", "others' CPU (max)"], rows))
    user = ratio(s["user"]["median"], base)
    both = ratio(s["user+rlimits"]["median"], base)
    out += [
        "",
        f"Goal: a `user` group's spawn within {GOAL_RATIO:g}× of a plain one: {times(user)}"
        f" ({ms(s['user']['median'])} against {ms(base)}) — **{verdict(user is not None and user <= GOAL_RATIO)}**;"
        f" with `rlimits` too: {times(both)} — **{verdict(both is not None and both <= GOAL_RATIO)}**",
    ]
    return out


def others_cell(pct: float | None) -> str:
    """*others' CPU*, bold when the machine was busy."""
    if pct is None:
        return "—"
    return f"**{pct:.0f}%**" if pct > QUIET_PCT else f"{pct:.0f}%"
