"""One line that says what machine a benchmark ran on: the SIMD ISA, kernel, Python, the packages
on the measured path, and the load average (a number from a busy machine is marked as such)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8")


def machine_line(packages: Sequence[str] = ("redis", "hiredis", "uvloop", "numpy")) -> str:
    """ISA, kernel, Python, ``packages`` with their versions, and the load average."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or platform.machine()
    found = []
    for name in packages:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return (f"ISA: {isa}; {platform.machine()}, Linux {platform.release()}, Python "
            f"{platform.python_version()}; {', '.join(found)}; load "
            "{:.1f} {:.1f} {:.1f} (1, 5, 15 min)".format(*os.getloadavg()))  # fmt: skip
