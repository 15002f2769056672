"""The Feast SDK in a virtual environment of its own, made once and reused.

Feast pins ``prometheus_client<0.25`` and brings pandas, dask, FastAPI and SQLAlchemy; installed
into headrace's venv it would downgrade our packages. So tests and the benchmark run Feast's CLI
and SDK from ``build/feast-venv`` (created here on first use, reused while its marker matches
``FEAST_REQUIREMENT``) in subprocesses.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import venv
from pathlib import Path

# The version whose Redis layout was checked byte by byte (shared/reference, section 1).
FEAST_REQUIREMENT = "feast[redis]==0.67.0"
ROOT = Path(__file__).resolve().parents[3]
FEAST_VENV = ROOT / "build" / "feast-venv"


def feast_python() -> Path:
    return FEAST_VENV / "bin" / "python"


def ensure_feast_venv() -> Path:
    """The venv's python, creating the venv when it is missing or holds another version."""
    marker = FEAST_VENV / ".headrace-requirement"
    FEAST_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(FEAST_VENV.parent / ".feast-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == FEAST_REQUIREMENT:
            return feast_python()
        venv.EnvBuilder(clear=True, with_pip=True).create(FEAST_VENV)
        subprocess.run(
            [str(feast_python()), "-m", "pip", "install", "--quiet", FEAST_REQUIREMENT],
            check=True,
        )
        subprocess.run([str(feast_python()), "-c", "import feast, redis, mmh3"], check=True)
        marker.write_text(FEAST_REQUIREMENT)
    return feast_python()


if __name__ == "__main__":
    print(ensure_feast_venv())
    sys.exit(0)
