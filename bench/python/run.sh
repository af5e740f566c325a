#!/usr/bin/env bash
# drover's Python function workers (spawn / fork / forkserver) against
# Python's own multiprocessing and a bare fork, with a heavy module (~300 ms
# import, ~200 MiB resident). See "Python function workers" in
# bench/README.md.
#
#   bash bench/python/run.sh [bench.py options]     # e.g. --kills 50
#
# Environment: PYTHON (interpreter, default python3), DROVER_BIN (a prebuilt
# drover instead of building the working tree), NUMPY=skip (no numpy
# variant). Prints the tables; writes target/bench/python/python.md (and
# python.json with the raw numbers).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/bench/python
mkdir -p "$out"

# A real interpreter path: a pyenv shim is a shell script, which would add
# its own start-up to every spawned worker.
py=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')

if [ -z "${DROVER_BIN:-}" ]; then
    cargo build --release --quiet
    # A private copy, so that a concurrent build cannot swap it mid-run.
    cp target/release/drover "$out/drover"
    drover="$out/drover"
    label="target/release/drover (working tree)"
else
    drover="$DROVER_BIN"
    label="$DROVER_BIN"
fi

# Optional numpy variant: a venv under target/bench/python with numpy from
# pip, made once; skipped (and said so) if that fails or takes over 2 min.
numpy_args=()
if [ "${NUMPY:-auto}" != skip ]; then
    venv="$out/venv"
    if ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
        echo "numpy variant: creating $venv and installing numpy (once) ..." >&2
        if ! { "$py" -m venv "$venv" && timeout 120 "$venv/bin/pip" install --quiet numpy; } >&2; then
            echo "numpy variant: could not install numpy; skipping it" >&2
        fi
    fi
    if "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
        numpy_args=(--numpy-python "$PWD/$venv/bin/python")
    else
        numpy_args=(--numpy-skipped "numpy could not be installed into $venv")
    fi
else
    numpy_args=(--numpy-skipped "NUMPY=skip")
fi

exec "$py" bench/python/bench.py --drover "$drover" --drover-label "$label" --python "$py" \
    "${numpy_args[@]}" "$@"
