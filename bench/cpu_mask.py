"""Run a benchmark as on an AVX2-only CPU: ``--cpu avx2`` re-executes the script with
bench/cpuid_mask.c preloaded, which hides AVX-512 from CPUID for the whole process and its
children (ONNX Runtime, numpy and headrace then all pick their AVX2 kernels, as on Zen 2/3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MARK = "HEADRACE_BENCH_AVX512_HIDDEN"


def avx512_hidden() -> bool:
    return os.environ.get(MARK) == "1"


def reexec_with_avx512_hidden() -> None:
    """Replace this process by the same command with AVX-512 hidden (no return)."""
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text(encoding="utf-8"):
        raise SystemExit("--cpu avx2 needs a CPU with cpuid_fault (Intel, Linux); not this one")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("--cpu avx2 needs a C compiler (cc) to build bench/cpuid_mask.c")
    library = Path(tempfile.mkdtemp(prefix="cpuid_mask_")) / "libcpuid_mask.so"
    source = Path(__file__).with_name("cpuid_mask.c")
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", str(source), "-o", str(library)], check=True
    )
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{library} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else str(library)
    env[MARK] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
