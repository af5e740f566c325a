#!/usr/bin/env bash
# drover's benchmarks, in one command (bench/README.md says what each number means):
#   bash bench/run.sh [SUITE...] [--quick] [options]     # --help lists them
# SUITE: core, methods, python, queues, durable, redis, reload, sockets, context, users; none: all of them.
# Results: target/bench/results.md (the report) and results.json (raw numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
# A real interpreter path: a pyenv shim is a shell script, which would add
# its own start-up to every Python worker the python suite spawns.
py=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
exec "$py" bench/run.py "$@"
