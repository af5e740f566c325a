#!/usr/bin/env python3
"""drover's benchmarks, in one harness.

    bash bench/run.sh [SUITE...] [--quick] [options]

SUITE: core, methods, python, queues, durable, redis, reload, sockets, context, users (none or `all`:
every one, in that order). Builds what the suites need once (drover unless
DROVER_BIN is set, the C helpers, a venv for supervisord / numpy), runs the
suites, and writes one report, target/bench/results.md, and every suite's
raw numbers, target/bench/results.json. Both describe exactly this run.
`--quick` runs every suite with small counts (a smoke run, not numbers to
quote). Not a test: nothing here asserts, it measures and reports.
Standard library only; see bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import OUT, BenchError, build  # noqa: E402
from lib.harness import Context  # noqa: E402
from lib.load import QUIET_PCT, OthersCpu, describe, machine, wait_quiet  # noqa: E402
from lib.procs import Interrupted, Procs, catch_signals  # noqa: E402
from lib.stats import table  # noqa: E402

SUITES = ("core", "methods", "python", "queues", "durable", "redis", "reload", "sockets", "context", "users")


def load_suites(names) -> dict:
    return {name: importlib.import_module(f"suites.{name}") for name in names}


def parse_args(argv: list[str]):
    every = load_suites(SUITES)
    p = argparse.ArgumentParser(prog="bash bench/run.sh", description=__doc__.split("\n\n")[0],
                                epilog="Numbers in brackets: the default, then the --quick value.")
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"{', '.join(SUITES)} or all (default: all)")
    p.add_argument("--quick", action="store_true", help="small counts everywhere: checks that every suite runs")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="wait this long at most for a quiet machine before the run [60, 5]")
    p.add_argument("--from-json", metavar="PATH", help="measure nothing: write the report of a results.json again")
    declared: dict[str, object] = {}
    for mod in every.values():
        for opt in mod.OPTIONS:
            if opt.flag in declared:
                assert declared[opt.flag] == opt, f"{opt.flag} declared twice, differently"
                continue
            declared[opt.flag] = opt
            if opt.type is bool:
                p.add_argument(opt.flag, action="store_true", default=None, help=opt.help)
            else:
                p.add_argument(opt.flag, type=opt.type, default=None, metavar="N",
                               help=f"{opt.help} [{opt.default:,}, {opt.quick:,}]")
    args = p.parse_args(argv)
    unknown = [s for s in args.suites if s not in (*SUITES, "all")]
    if unknown:
        p.error(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}, all")
    args.suites = [s for s in SUITES if s in args.suites] if args.suites and "all" not in args.suites else list(SUITES)
    for opt in declared.values():
        dest = opt.flag[2:].replace("-", "_")
        if getattr(args, dest) is None:
            setattr(args, dest, opt.quick if args.quick else opt.default)
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 60.0
    return args


def options_of(mod, args) -> dict:
    return {opt.flag[2:].replace("-", "_"): getattr(args, opt.flag[2:].replace("-", "_")) for opt in mod.OPTIONS}


def prepare(suites: dict, args) -> tuple[Path | None, str | None, dict, dict]:
    """Builds what the chosen suites need, each thing once."""
    needs = {n for mod in suites.values() for n in mod.NEEDS}
    drover, label = build.drover() if set(suites) - {"context"} else (None, None)
    bins = {name: build.c_helper(name) for name in ("stamp", "probe", "qb", "inotify_watch") if name in needs}
    venv = {}
    if "supervisord" in needs:
        venv["supervisord"] = build.venv_with("supervisor", ["supervisord", "--version"])
    if "numpy" in needs and not args.no_numpy:
        venv["numpy"] = build.venv_with("numpy", ["python", "-c", "import numpy"])
    return drover, label, bins, venv


def run(args) -> int:
    suites = load_suites(args.suites)
    began = time.monotonic()
    drover, label, bins, venv = prepare(suites, args)
    procs = Procs()
    if "stamp" in bins:
        procs.sweeps.append((OUT / "run", str(bins["stamp"])))
    ctx = Context(args, drover, bins, venv, procs, sys.executable)
    header = {
        "command": " ".join(["bash bench/run.sh", *map(shlex.quote, sys.argv[1:])]),
        "suites": args.suites,
        "machine": machine(),
        "drover": f"{drover} ({label})" if drover else None,
        "supervisord": str(ctx.supervisord) if ctx.supervisord else None,
    }
    print("== waiting for a quiet machine" if args.quiet_wait else "== measuring the machine's load", flush=True)
    header["load_before"] = wait_quiet(args.quiet_wait)
    results: dict = {"header": header, "suites": {}}
    code = 0
    try:
        for name, mod in suites.items():
            ctx.enter(name)
            ctx.step(f"== {mod.TITLE}")
            others, t = OthersCpu(), time.monotonic()
            entry: dict = {"options": options_of(mod, args)}
            try:
                entry.update(mod.run(ctx))
            except BenchError as e:
                print(f"\n{name} FAILED: {e}", file=sys.stderr, flush=True)
                entry["error"] = str(e)
                code = 1
            except Interrupted as e:
                entry["error"] = str(e)
                raise
            finally:
                procs.cleanup()
                entry.update(notes=ctx.notes, seconds=time.monotonic() - t, others_pct=others.pct())
                results["suites"][name] = entry
    except Interrupted as e:
        print(f"\n{e}: every process the bench started was stopped; reporting what was measured",
              file=sys.stderr, flush=True)
        header["interrupted"] = str(e)
        code = 130
    finally:
        procs.cleanup()
    header["leftovers"] = procs.leftovers
    header["load_after"] = wait_quiet(0)
    header["seconds"] = time.monotonic() - began
    write(results)
    return code


def report(results: dict) -> str:
    """The whole report: the header, then each suite's section."""
    h = results["header"]
    m = h["machine"]
    out = [
        "# drover benchmark results",
        "",
        f"- command: `{h['command']}` ({h['seconds']:.0f} s)",
        f"- machine: {m['nproc']} CPUs, {m['model']}, Linux {m['kernel']}; transparent huge pages {m['thp']}",
        f"- RLIMIT_NOFILE of the bench: {m['nofile']}; Python {m['python']}; {m['date']}",
        f"- drover: {h['drover'] or 'not used'}; the working tree is at {m['git']}",
        f"- supervisord: {h['supervisord'] or 'not installed (its rows are skipped)'}",
        "- other load (CPU busy while the bench slept 1 s, of all CPUs): before "
        + describe(h["load_before"]) + "; after " + describe(h["load_after"]),
    ]
    for when in ("before", "after"):
        if h[f"load_{when}"]["busy_pct"] > QUIET_PCT:
            out.append(f"- **the machine was busy {when} the run: latencies are inflated — rerun on a quiet machine**")
    if h.get("interrupted"):
        out.append(f"- **{h['interrupted']}: the suites after the last one below did not run, and that one"
                   " did not finish**")
    for leftover in h.get("leftovers", []):
        out.append(f"- **left behind: {leftover}**")
    rows = [[name, f"{r['seconds']:.0f} s", f"{r['others_pct']:.1f}%", "FAILED" if r.get("error") else "ok"]
            for name, r in results["suites"].items()]
    out += ["", table(["suite", "took", "others' CPU meanwhile", ""], rows), ""]
    out += targets(results)
    for name, r in results["suites"].items():
        mod = load_suites([name])[name]
        out += [f"## {name}: {mod.TITLE}", ""]
        if r.get("error"):
            out += [f"**FAILED**: {r['error']}", ""]
        else:
            out += mod.report(r, h) + [""]
        notes = list(r["notes"])
        if r["others_pct"] > QUIET_PCT:
            notes.append(f"**other processes used {r['others_pct']:.0f}% of the CPUs during this suite: "
                         "its latencies are inflated**")
        if notes:
            out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def targets(results: dict) -> list[str]:
    """One table of every performance target the suites that ran judge:
    each suite with targets has a `targets(r)` giving rows of (measure,
    measured, target, verdict); their details are in the suite's section."""
    rows = []
    for name, r in results["suites"].items():
        mod = load_suites([name])[name]
        if r.get("error") or not hasattr(mod, "targets"):
            continue
        rows += [[f"{name}: {row[0]}", *row[1:]] for row in mod.targets(r)]
    if not rows:
        return []
    return ["## Targets", "",
            "Each ratio is against an anchor measured in the same run; a ratio within 5% of its target "
            "counts as at the target (met).", "",
            table(["measure", "measured", "target", "verdict"], rows), ""]


def write(results: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    text = report(results)
    print()
    print(text)
    (OUT / "results.md").write_text(text)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"written: {os.path.relpath(OUT / 'results.md')} and results.json", flush=True)


def main() -> int:
    args = parse_args(sys.argv[1:])
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        text = report(results)
        print(text)
        (OUT / "results.md").write_text(text)
        return 0
    catch_signals()
    # The Python workers must not write __pycache__ into bench/ either. (Not
    # PYTHONPYCACHEPREFIX: with bytecode writing off, a prefix makes every
    # interpreter compile the standard library again, 150 ms a start.)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    os.environ.pop("PYTHONPATH", None)
    try:
        return run(args)
    except (BenchError, OSError, subprocess.SubprocessError, Interrupted) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 1


if __name__ == "__main__":
    sys.exit(main())
