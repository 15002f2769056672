#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before bench/gpu_check.sh goes to the GPU machine: downloads into
# .whl/ the Python 3.12 x86-64 wheels that the GPU machine's image lacks (it has no network; see
# /work/.library/device/KINDS.md for its package list), at the versions of this checkout's .venv:
# grpcio-tools (protoc writes the protocol's descriptor set at build time) with the grpcio and
# protobuf it was built against, and pydantic/pydantic-settings with their dependencies. The image
# has the rest (onnx, onnxruntime, uvloop, prometheus-client, pytest, pytest-timeout, hypothesis);
# gpu_check.sh checks every module it needs before it builds. watchfiles is left out: the
# repository watcher polls without it. Carry .whl with the run (about 13 MB); .gitignore keeps it
# out of commits.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/python -m pip}"
version() { $PIP show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
rm -rf .whl && mkdir -p .whl
for name in grpcio grpcio-tools protobuf pydantic pydantic-core pydantic-settings python-dotenv \
    annotated-types typing-inspection; do
  v="$(version "$name")"
  [ -n "$v" ] || { echo "gpu_wheels: $name is not installed in the venv (run make install-dev)"; exit 1; }
  $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$v"
done
ls -la .whl && du -sh .whl
