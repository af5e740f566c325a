#!/usr/bin/env bash
# drover's queue benchmark, in one command:
#   bash bench/queues/run.sh [queues.py options]     (--help lists them)
#
# Builds drover (release) unless DROVER_BIN is set, compiles the C helper
# bench/queues/qb.c with cc -O2 into target/bench/qb, then runs
# bench/queues/queues.py (standard library only), which prints one report and
# writes it to target/bench/queues.md (raw numbers: target/bench/queues.json).
# Everything it creates lives under target/bench/. Not a test: nothing here
# asserts, it measures and reports.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=target/bench
mkdir -p "$out"

drover=${DROVER_BIN:-target/release/drover}
if [ -n "${DROVER_BIN:-}" ]; then
    echo "== using DROVER_BIN=$DROVER_BIN (not building)"
else
    echo "== building drover (release)"
    cargo build --release --quiet
fi

echo "== compiling bench/queues/qb.c"
cc -O2 -Wall -Wextra -o "$out/qb" bench/queues/qb.c

python=${PYTHON:-python3}
echo "== running bench/queues/queues.py"
exec "$python" bench/queues/queues.py --drover "$drover" --qb "$out/qb" --python "$python" "$@"
