#!/usr/bin/env bash
# drover::context against Python's multiprocessing, measured in one run:
# Process.start -> first message received by the parent, per start method
# (Python's forkserver with and without preloading the target's module).
#
#   bash bench/context/run.sh [RUNS]        # default 100 starts per method
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-100}
results=$(mktemp)
trap 'rm -f "$results"' EXIT

cargo build --release --quiet --example context_bench
cargo run --release --quiet --example context_bench -- "$runs" >>"$results"
for variant in spawn fork forkserver forkserver-preload; do
    python3 bench/context/mp_bench.py "$variant" "$runs" >>"$results"
done
python3 bench/context/report.py "$results"
