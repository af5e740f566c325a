#!/usr/bin/env bash
# drover's benchmarks, in one command:
#   bash bench/run.sh [SECTION...] [bench.py options]
# SECTION: core (restart, start, footprint, idle, other observations) and/or
# methods (restart latency per start method and supervisor size); none: all.
#
# Builds drover (release), compiles the C helpers, installs supervisord into
# a venv for the side-by-side comparison (only when `core` runs), then runs
# bench/bench.py. All it creates lives under target/bench/; results land in
# target/bench/results.md. Not a test: nothing here asserts, it measures and
# reports.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/bench
mkdir -p "$out"

drover=${DROVER_BIN:-target/release/drover}
if [ -n "${DROVER_BIN:-}" ]; then
    echo "== using DROVER_BIN=$DROVER_BIN (not building)"
else
    echo "== building drover (release)"
    cargo build --release --quiet
fi

echo "== compiling bench/stamp.c and bench/probe.c"
cc -O2 -Wall -Wextra -o "$out/stamp" bench/stamp.c
cc -O2 -Wall -Wextra -o "$out/probe" bench/probe.c

python=${PYTHON:-python3}

# supervisord is only compared in the core section: the default (no section
# named), `core` or `all`. Option values are numbers, never section names.
needs_supervisord=yes
for arg in "$@"; do
    case $arg in
        core | all) needs_supervisord=yes; break ;;
        methods) needs_supervisord=no ;;
    esac
done

sv_args=()
if [ "$needs_supervisord" = no ]; then
    echo "== not installing supervisor (the core section does not run)"
else
    echo "== installing supervisor into $out/venv"
    if { [ -x "$out/venv/bin/python" ] || "$python" -m venv "$out/venv"; } \
        && "$out/venv/bin/python" -m pip install --quiet --disable-pip-version-check supervisor \
        && "$out/venv/bin/supervisord" --version >/dev/null; then
        echo "   supervisord $("$out/venv/bin/supervisord" --version)"
        sv_args=(--supervisord "$out/venv/bin/supervisord")
    else
        echo "!! could not install supervisor with pip: the supervisord comparison is skipped"
    fi
fi

echo "== running bench/bench.py"
exec "$python" bench/bench.py --drover "$drover" "${sv_args[@]}" "$@"
