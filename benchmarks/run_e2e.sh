#!/usr/bin/env bash
# One GPU-machine call for the end-to-end FLUX.1-size benchmark (carry a wheel folder with diffusers,
# importlib_metadata, torchao, bitsandbytes; e.g. WHEELS=.e2ewhl; and .prebuilt from benchmarks/prebuild_device.sh
# to skip the build). Logs and JSON go to $OUT.
# usage (repo root): WHEELS=.e2ewhl bash benchmarks/run_e2e.sh [extra flux_e2e.py args]
set -uo pipefail
OUT=${OUT:-/tmp/svdq_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SVDQUANT_HF_CACHE=/tmp/svdq_cache
for d in quantizers:quantizers _csrc:csrc hub_scripts:hub_scripts; do
  [ -e "svdquant_hf/${d%%:*}" ] || ln -s "../${d##*:}" "svdquant_hf/${d%%:*}"
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${WHEELS:-.e2ewhl}"/*.whl \
  > /tmp/pip.log 2>&1 || { echo "wheel install failed"; tail -3 /tmp/pip.log; }
export PYTHONPATH=$PWD:/tmp/site
. benchmarks/device_build.sh  # the carried .prebuilt kernels if they match the tree, else an AOT build here
python3 benchmarks/flux_e2e.py --out "$OUT/flux_e2e.json" "$@" 2>&1 | tee "$OUT/e2e.log" | grep -vE "^\{" | tail -40
