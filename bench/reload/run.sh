#!/usr/bin/env bash
# drover's config-reload benchmark, in one command:
#   bash bench/reload/run.sh [reload.py options]     (--help lists them)
#
# Builds drover (release), compiles bench/stamp.c and
# bench/reload/inotify_watch.c into target/bench/reload/bin/, makes sure
# supervisord is in target/bench/venv (the venv bench/run.sh uses; created
# here if missing), then runs bench/reload/reload.py. Results land in
# target/bench/reload.md (and the raw numbers in target/bench/reload.json).
# Not a test: nothing here asserts, it measures and reports.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=target/bench
bin=$out/reload/bin
mkdir -p "$bin"

drover=${DROVER_BIN:-target/release/drover}
if [ -n "${DROVER_BIN:-}" ]; then
    echo "== using DROVER_BIN=$DROVER_BIN (not building)"
else
    echo "== building drover (release)"
    cargo build --release --quiet
fi

echo "== compiling bench/stamp.c and bench/reload/inotify_watch.c into $bin"
cc -O2 -Wall -Wextra -o "$bin/stamp" bench/stamp.c
cc -O2 -Wall -Wextra -o "$bin/inotify_watch" bench/reload/inotify_watch.c

python=${PYTHON:-python3}

sv_args=()
if [ -x "$out/venv/bin/supervisord" ] && [ -x "$out/venv/bin/supervisorctl" ]; then
    echo "== reusing supervisor in $out/venv ($("$out/venv/bin/supervisord" --version))"
    sv_args=(--supervisord "$out/venv/bin/supervisord")
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

echo "== running bench/reload/reload.py"
exec "$python" bench/reload/reload.py --drover "$drover" --stamp "$bin/stamp" \
    --watch "$bin/inotify_watch" "${sv_args[@]}" "$@"
