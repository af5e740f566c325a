"""Joins the JSON lines of context_bench (drover) and mp_bench.py (Python)
into one table with ratios (Python time / drover time: above 1, drover is
faster).

    python3 bench/context/report.py RESULTS.jsonl
"""
import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    drover = {r["method"]: r for r in rows if r["impl"] == "drover"}
    python = [r for r in rows if r["impl"] == "python"]
    runs = rows[0]["runs"] if rows else 0
    print(f"Process.start -> first message received ({runs} runs each, microseconds)")
    header = ("python method", "drover med", "drover p99", "python med",
              "python p99", "med ratio", "p99 ratio", "drover 1st", "python 1st")
    print(f"{header[0]:<18}" + "".join(f"{h:>12}" for h in header[1:]))
    worst = None
    for py in python:
        rs = drover[py["method"].split("-")[0]]
        med = py["median_us"] / rs["median_us"]
        p99 = py["p99_us"] / rs["p99_us"]
        worst = med if worst is None else min(worst, med)
        cells = (py["method"], rs["median_us"], rs["p99_us"], py["median_us"],
                 py["p99_us"], f"{med:.1f}x", f"{p99:.1f}x", rs["first_us"],
                 py["first_us"])
        print(f"{cells[0]:<18}" + "".join(f"{c:>12}" for c in cells[1:]))
    if worst is not None:
        verdict = "drover faster at every method" if worst > 1 else "drover SLOWER somewhere"
        print(f"smallest median ratio: {worst:.1f}x ({verdict})")


if __name__ == "__main__":
    main()
