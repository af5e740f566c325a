"""The shared helpers of drover's benchmark harness (bench/run.py).

Standard library only. Every suite under bench/suites/ and the chaos soak
use these modules, so that processes are started, measured, cleaned up and
reported the same way everywhere:

- proc:     readers of /proc (stat, status, smaps_rollup, context switches,
            CPU ticks, children, sessions);
- stats:    percentiles, summaries, ratios, and their markdown formatting;
- load:     the machine's description, git state, CPU load and the wait for
            a quiet machine;
- procs:    starting processes in their own session and killing everything
            they left behind, on success, error, Ctrl-C or SIGTERM;
- stamps:   the timestamps the child programs write when they start;
- drover:   a `drover run` under the bench's control, and supervisord;
- build:    building drover and the C helpers, and the venv for supervisord
            and numpy.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "bench"


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""
