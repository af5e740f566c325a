"""context: drover's Rust `context` library against Python's multiprocessing.

For each start method, the time from Process.start to the parent receiving
the child's first message, as Python's tutorial program does it: drover's
`context_bench` example (run by name with `cargo run --release --example
context_bench`, wherever the workspace keeps it) and
bench/workers/context_mp.py, Python's forkserver with and without
preloading the target's module. Each reports the median and p99 of RUNS
timed starts after one cold start, which it reports on its own.
"""

from __future__ import annotations

import json

from lib import ROOT
from lib.harness import Option
from lib.stats import table, times, verdict

TITLE = "Rust library: drover::context against Python's multiprocessing"
NEEDS = ("cargo",)
OPTIONS = [Option("--context-runs", int, 100, 10, "context: timed starts per method")]

PYTHON_VARIANTS = ("spawn", "fork", "forkserver", "forkserver-preload")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run(ctx) -> dict:
    runs = str(ctx.opts.context_runs)
    ctx.step(f"drover: cargo run --release --example context_bench -- {runs}")
    drover = json_lines(ctx.procs.output(["cargo", "run", "--release", "--quiet", "--example", "context_bench", "--",
                                          runs], "context_bench", 600, cwd=ROOT))
    python = []
    for variant in PYTHON_VARIANTS:
        ctx.step(f"python: multiprocessing {variant} x{runs}")
        python += json_lines(ctx.procs.output([ctx.python, ROOT / "bench" / "workers" / "context_mp.py", variant,
                                               runs], f"context_mp.py {variant}", 600))
    return {"drover": {r["method"]: r for r in drover}, "python": python}


def report(r: dict, header: dict) -> list[str]:
    rows = []
    worst = None
    for py in r["python"]:
        rs = r["drover"][py["method"].split("-")[0]]
        med = py["median_us"] / rs["median_us"]
        worst = med if worst is None else min(worst, med)
        rows.append([py["method"], f"{rs['median_us']:.1f}", f"{rs['p99_us']:.1f}", f"{py['median_us']:.1f}",
                     f"{py['p99_us']:.1f}", times(med), times(py["p99_us"] / rs["p99_us"]), f"{rs['first_us']:.1f}",
                     f"{py['first_us']:.1f}"])
    return [
        f"Process.start → first message received by the parent ({r['options']['context_runs']} runs each, after "
        "one cold start; microseconds). Ratios: Python ÷ drover, above 1 drover is faster.",
        "",
        table(["python method", "drover median", "drover p99", "python median", "python p99", "median ratio",
               "p99 ratio", "drover 1st", "python 1st"], rows),
        "",
        f"- smallest median ratio: {times(worst)} — drover faster at every method: **{verdict(worst > 1)}**",
    ]
