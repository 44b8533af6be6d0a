#!/usr/bin/env bash
# Build the CUDA kernels on this (GPU-less) machine for the lent Hopper machine, into .prebuilt/ (git-ignored), so a
# device call can carry them (`carry: [".prebuilt"]`) instead of compiling for 70-120 s of its time. The device's
# run_device.sh / run_e2e.sh use them only when their SOURCES hash matches the tree's csrc/ and build.py there.
# Needs a Python 3.12 virtual environment with the device's torch (2.11.0+cu130, its CUDA wheels installed so that
# torch imports): DEVICE_TORCH_VENV (default /tmp/t211), e.g.
#   python3.12 -m venv /tmp/t211 && /tmp/t211/bin/pip install torch==2.11.0 "setuptools<82" ninja
# usage (repo root): bash benchmarks/prebuild_device.sh      (MAX_JOBS=2 by default; ~4-6 min on 2 cores)
set -euo pipefail
venv=${DEVICE_TORCH_VENV:-/tmp/t211}
[ -x "$venv/bin/python" ] || { echo "prebuild_device: no Python at $venv/bin/python (set DEVICE_TORCH_VENV)" >&2; exit 2; }
rm -rf .prebuilt && mkdir -p .prebuilt/build
# torch's CUDA headers include cuBLAS / cuSPARSE / cuSOLVER ones, which a bare nvcc install may lack: the CUDA wheels'
inc=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13/include 2>/dev/null | head -1)
export CPATH="${inc:+$inc:}${CPATH:-}"
t0=$(date +%s)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0} MAX_JOBS=${MAX_JOBS:-2} PATH="$venv/bin:$PATH" "$venv/bin/python" - <<'EOF'
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("svdq_build", "svdquant_hf/ops/build.py")  # no package import
b = importlib.util.module_from_spec(spec)
spec.loader.exec_module(b)
try:
    b.build(["9.0"], Path(".prebuilt/build"))
except (ImportError, OSError) as e:  # the import after the build may need a driver; the .so is what matters
    print(f"prebuild_device: built, not importable here ({type(e).__name__})")
EOF
cp .prebuilt/build/svdquant_hf_kernels.so .prebuilt/
rm -rf .prebuilt/build
bash benchmarks/kernel_sources_hash.sh > .prebuilt/SOURCES
echo "prebuild_device: .prebuilt/svdquant_hf_kernels.so ($(du -h .prebuilt/svdquant_hf_kernels.so | cut -f1)) in $(( $(date +%s) - t0 )) s"
