#!/usr/bin/env bash
# Every GPU check of issue 15 (the CUDA int8 path) in one call, on a machine with an NVIDIA GPU of
# compute capability >= 8.0 and this workplace's CUDA image (python3 with torch, onnx,
# onnxruntime (CPU), pybind11, scikit-build-core, cmake, ninja, pytest, pytest-timeout,
# hypothesis, uvloop, prometheus-client; nvcc; no network). Within 9.5 minutes (each step gets at
# most what is left of that, so a slow step never costs the results of the ones before it):
#   1. build headrace with HEADRACE_CUDA=ON, warnings as errors, sm_90 (~1-2 min on 16 cores)
#   2. the CUDA tests: tests/unit/test_cuda_*.py (GPU tests: bit-exactness vs the CPU int32
#      reference on random/extreme/odd shapes, whole-MLP vs QuantizedMlp; [int8] device "auto"
#      and "cuda" through the engine; a model served over gRPC from the GPU, through the batcher's
#      CudaMlpRunner)
#   3. bench/bench_cuda.py: GEMM TOPS vs torch._int_mm and fp16, the wide MLP at batch 1/8/32/64
#   4. compute-sanitizer memcheck and racecheck on small launches of both kernels
# Results go to $OUT (the device tool's folder), else ./gpu_check_out: gpu_check.log (everything),
# pytest.xml, bench_cuda.json, ptxas.txt (registers/spills of each kernel), sanitizer_*.txt.
#
# Before the call, on a machine with PyPI:   bash bench/gpu_wheels.sh      (fills .whl/)
# The call (device tool, from the repository root):
#   command: bash bench/gpu_check.sh      carry: [".whl"]      timeout_s: 600
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
status=0
test_rc=skipped bench_rc=skipped sanitizer_rc=skipped
step() { echo; echo "=== $(date +%T) $*"; }
# Seconds a step may take: its own cap, or what is left before the deadline (570 s after the
# start: the device call's 600 s limit, less the time to copy $OUT back).
deadline=$(( $(date +%s) + 570 ))
budget() { local left=$(( deadline - $(date +%s) )); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
nvcc --version | tail -2
$PY --version

step "wheels the image lacks (.whl, from bench/gpu_wheels.sh)"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/ carried: relying on the image (grpcio-tools and pydantic are usually missing)"
fi

step "Python modules the run needs (image or .whl)"
$PY - <<'CHECK' || exit 1
import importlib.util, sys
needed = ["grpc", "grpc_tools", "google.protobuf", "numpy", "onnx", "onnxruntime", "pydantic",
          "pydantic_settings", "uvloop", "prometheus_client", "pytest", "pytest_timeout",
          "hypothesis", "torch", "pybind11", "scikit_build_core"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
print("missing:", ", ".join(missing) if missing else "none")
sys.exit(1 if missing else 0)
CHECK

step "build (HEADRACE_CUDA=ON, -Werror, sm_90)"
build_start=$(date +%s)
HEADRACE_CUDA=ON HEADRACE_WERROR=ON HEADRACE_CUDA_ARCHITECTURES=90 \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" timeout "$(budget 240)" \
  $PY -m pip install --no-build-isolation --no-deps --no-cache-dir --target /tmp/headrace \
    --config-settings=build-dir=/tmp/headrace-build . > "$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - build_start )) s (log: build.log)"
if [ $build_rc -ne 0 ]; then tail -60 "$OUT/build.log"; exit 1; fi
export PYTHONPATH="/tmp/headrace:$PYTHONPATH"
# Registers, shared memory and spills of every kernel, for the record.
nvcc -std=c++20 -arch=sm_90 -O3 -Icsrc --expt-relaxed-constexpr -Xptxas -v -c \
  csrc/cuda/mlp_kernel.cu -o /tmp/mlp_kernel.o > "$OUT/ptxas.txt" 2>&1
nvcc -std=c++20 -arch=sm_90 -O3 -Icsrc --expt-relaxed-constexpr -Xptxas -v -c \
  csrc/cuda/gemm_kernel.cu -o /tmp/gemm_kernel.o >> "$OUT/ptxas.txt" 2>&1
grep -E "registers|spill" "$OUT/ptxas.txt"
cuobjdump --dump-sass /tmp/mlp_kernel.o 2>/dev/null | grep -cE "IMMA" | sed 's/^/IMMA instructions in the whole-MLP kernel: /'

step "CUDA tests"
$PY -c "from headrace import _core; print(_core.cuda_discover())"
timeout "$(budget 240)" $PY -m pytest -p no:cacheprovider -q -rs --timeout=90 --maxfail=15 --junitxml="$OUT/pytest.xml" \
  tests/unit/test_cuda_device.py tests/unit/test_cuda_packing.py tests/unit/test_cuda_gpu.py
test_rc=$?
echo "pytest rc=$test_rc"
[ $test_rc -eq 0 ] || status=1

step "bench/bench_cuda.py"
timeout "$(budget 180)" $PY bench/bench_cuda.py --out "$OUT"
bench_rc=$?
echo "bench rc=$bench_rc"
[ $bench_rc -eq 0 ] || status=1

step "compute-sanitizer: memcheck and racecheck on small launches of both kernels"
cat > /tmp/sanitize_launches.py <<'PY'
import numpy as np
from headrace import _core
from headrace import quantize as hq
rng = np.random.default_rng(0)
widths, layers = [70, 130, 33, 9], []
for i, (k, n) in enumerate(zip(widths, widths[1:])):
    layers.append(hq.QuantizedLayer(rng.integers(-127, 128, (k, n), dtype=np.int8),
        np.full(n, 0.01, np.float32), np.zeros(n, np.float32),
        hq.Activation.SOFTMAX if i == 2 else hq.Activation.RELU, None))
data = hq.encode_int8_model(hq.TensorSpec("x", "FP32", (-1, 70)), hq.TensorSpec("y", "FP32", (-1, 9)), layers)
x = rng.standard_normal((70, 70)).astype(np.float32)
for cluster in (1, 2):
    _core.CudaMlp.from_bytes(data, cluster_size=cluster).run(x)
a = rng.integers(-128, 128, (130, 100), dtype=np.int8)
_core.cuda_gemm_s32(a, rng.integers(-128, 128, (100, 70), dtype=np.int8))
print("launches ran")
PY
sanitizer_rc=0
for tool in memcheck racecheck; do
  timeout "$(budget 90)" compute-sanitizer --tool $tool --error-exitcode 3 $PY /tmp/sanitize_launches.py \
    > "$OUT/sanitizer_$tool.txt" 2>&1
  rc=$?
  echo "compute-sanitizer $tool rc=$rc"; tail -5 "$OUT/sanitizer_$tool.txt"
  [ $rc -eq 0 ] || sanitizer_rc=$rc
done
[ $sanitizer_rc -eq 0 ] || status=1

step "done: status=$status (tests rc=$test_rc, bench rc=$bench_rc, sanitizer rc=$sanitizer_rc)"
exit $status
