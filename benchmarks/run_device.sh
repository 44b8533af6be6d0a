#!/usr/bin/env bash
# One GPU-machine call: build the kernels (AOT, timed), resource usage, GPU tests (incl. compute-sanitizer),
# then the GEMM benchmark. Logs go to $OUT; the short table prints last.
# usage (repo root): bash benchmarks/run_device.sh [tests|bench|all]   (carry .bnbwhl for NF4 + diffusers)
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/svdq_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SVDQUANT_HF_CACHE=/tmp/svdq_cache
# package layout without installing: the setuptools package-dir mapping, by symlinks in this copy
[ -e svdquant_hf/quantizers ] || ln -s ../quantizers svdquant_hf/quantizers
[ -e svdquant_hf/_csrc ] || ln -s ../csrc svdquant_hf/_csrc
[ -e svdquant_hf/hub_scripts ] || ln -s ../hub_scripts svdquant_hf/hub_scripts
if [ -d .bnbwhl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .bnbwhl/*.whl \
    > "$OUT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$OUT/env.log" 2>&1
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" >> "$OUT/env.log" 2>&1
nvcc --version | tail -1 >> "$OUT/env.log"
cat "$OUT/env.log"

t0=$(date +%s)
python3 -m svdquant_hf.ops.build --aot --verbose > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s"
grep -iE "error|warning C75" "$OUT/build.log" | head -20
so=$(ls /tmp/svdq_cache/kernels/*/svdquant_hf_kernels.so 2>/dev/null | head -1)
if [ -n "$so" ]; then
  cuobjdump -res-usage "$so" 2>/dev/null | grep -E "Function|REG" | paste - - | sed -E 's/Function ([^:]*):.*REG:([0-9]+).*SHARED:([0-9]+).*LOCAL:([0-9]+).*/\1 REG=\2 SHARED=\3 LOCAL=\4/' \
    | sed -E 's/_ZN4svdq[^_]*_GLOBAL__N__[0-9a-f_]*//' > "$OUT/resusage.log"
  cuobjdump -sass "$so" > "$OUT/sass.txt" 2>/dev/null
  echo "sass: IMMA=$(grep -c IMMA "$OUT/sass.txt") HMMA=$(grep -c HMMA "$OUT/sass.txt") I2F=$(grep -c I2F "$OUT/sass.txt") LDL=$(grep -c LDL "$OUT/sass.txt")"
fi

if [ "$what" = tests ] || [ "$what" = all ]; then
  t0=$(date +%s)
  timeout 280 python3 -m pytest -q --maxfail=20 -p no:cacheprovider tests/gpu -m "gpu or not gpu" --timeout 270 \
    -o addopts="" > "$OUT/tests.log" 2>&1
  echo "tests rc=$? in $(( $(date +%s) - t0 )) s"
  grep -E "passed|failed|error|Error|assert" "$OUT/tests.log" | tail -15
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  timeout 170 python3 benchmarks/gemm_bench.py --json "$OUT/gemm_bench.json" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  tail -22 "$OUT/bench.log"
fi
