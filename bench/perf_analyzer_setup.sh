#!/usr/bin/env bash
# Puts Triton's perf_analyzer at bench/.tools/perf_analyzer (and prints the env it needs).
# The pip `perf-analyzer` package is an empty placeholder; the binary ships inside the
# tritonclient==2.44.0 wheel and needs libb64 (Debian libb64-0d) and libcudart.so.12 (from the
# nvidia-cuda-runtime-cu12 wheel) on its library path, even for CPU-only gRPC use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$here/.tools"
python="${PYTHON:-python3}"
mkdir -p "$tools"
if [ ! -x "$tools/perf_analyzer" ]; then
  "$python" -m pip download --quiet --no-deps -d "$tools/wheels" tritonclient==2.44.0
  "$python" -m zipfile -e "$tools"/wheels/tritonclient-2.44.0-*.whl "$tools/tritonclient-wheel"
  cp "$tools/tritonclient-wheel/tritonclient-2.44.0.data/data/bin/perf_analyzer" "$tools/"
  chmod +x "$tools/perf_analyzer"
  rm -rf "$tools/tritonclient-wheel"
fi
if [ ! -d "$tools/cudart" ]; then
  "$python" -m pip install --quiet --target "$tools/cudart" nvidia-cuda-runtime-cu12
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  if ! apt-get install -y -q libb64-0d >/dev/null 2>&1; then
    apt-get update -q >/dev/null && apt-get install -y -q libb64-0d >/dev/null
  fi
fi
cudart_lib="$(dirname "$(find "$tools/cudart" -name 'libcudart.so.12' | head -1)")"
echo "export LD_LIBRARY_PATH=$cudart_lib:\${LD_LIBRARY_PATH:-}"
