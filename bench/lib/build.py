"""What the suites need before they measure, built once per run.

- drover: `cargo build --release` of the working tree, copied to
  target/bench/bin/drover so that a concurrent build cannot swap the binary
  in the middle of a run; or the binary DROVER_BIN names, as it is.
- the C helpers of bench/c/, compiled with `cc -O2` into target/bench/bin/.
- a venv in target/bench/venv with supervisor (the supervisord anchors) or
  numpy (the numpy variant of the Python suite), installed with pip once;
  when that fails the suites say so and skip those rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import OUT, ROOT, BenchError

BIN = OUT / "bin"
VENV = OUT / "venv"
C_SOURCES = ROOT / "bench" / "c"


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def drover() -> tuple[Path, str]:
    """The drover binary to measure and how the report names it."""
    given = os.environ.get("DROVER_BIN")
    if given:
        say(f"using DROVER_BIN={given} (not building)")
        path = Path(given).resolve()
        if not os.access(path, os.X_OK):
            raise BenchError(f"DROVER_BIN={given} is not an executable")
        return path, "prebuilt, from DROVER_BIN"
    say("building drover (cargo build --release)")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    BIN.mkdir(parents=True, exist_ok=True)
    copy = BIN / "drover"
    tmp = BIN / ".drover.tmp"
    shutil.copy2(ROOT / "target" / "release" / "drover", tmp)
    os.replace(tmp, copy)
    return copy, "cargo build --release of the working tree, copied"


def c_helper(name: str) -> Path:
    """Compiles bench/c/NAME.c into target/bench/bin/NAME."""
    BIN.mkdir(parents=True, exist_ok=True)
    out = BIN / name
    say(f"compiling bench/c/{name}.c")
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(out), str(C_SOURCES / f"{name}.c")], check=True)
    return out


def venv_with(package: str, check: list[str], timeout: float = 300) -> Path | None:
    """target/bench/venv with `package` installed from pip (once); the venv's
    bin/ directory, or None (said why) when it cannot be had. check: a
    command, relative to bin/, that succeeds once the package works."""
    bin_dir = VENV / "bin"

    def works() -> bool:
        try:
            return subprocess.run([str(bin_dir / check[0]), *check[1:]], capture_output=True,
                                  timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    if works():
        say(f"reusing {package} in {VENV}")
        return bin_dir
    say(f"installing {package} into {VENV} with pip")
    try:
        if not (bin_dir / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        package], check=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        say(f"!! could not install {package}: {e}")
        return None
    if not works():
        say(f"!! {package} was installed but `{' '.join(check)}` fails")
        return None
    return bin_dir
