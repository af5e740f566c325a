"""The benchmark suites: one module each, run by bench/run.py (see lib/harness.py for what a suite declares)."""
