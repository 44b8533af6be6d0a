# Sourced by run_device.sh and run_e2e.sh on the device: use the carried .prebuilt/ kernels when they match this tree
# (benchmarks/prebuild_device.sh), else build them here (AOT, timed). Logs to $OUT/build.log.
t0=$(date +%s)
if [ -f .prebuilt/SOURCES ] && [ "$(bash benchmarks/kernel_sources_hash.sh)" = "$(cat .prebuilt/SOURCES)" ] \
   && SVDQUANT_HF_KERNELS_DIR=$PWD/.prebuilt python3 -c "
from svdquant_hf.ops import build
assert build._load_prebuilt() is not None" > "$OUT/build.log" 2>&1; then
  export SVDQUANT_HF_KERNELS_DIR=$PWD/.prebuilt
  echo "kernels: prebuilt (.prebuilt, sources match), loaded in $(( $(date +%s) - t0 )) s"
else
  [ -d .prebuilt ] && echo "kernels: .prebuilt not used (sources differ or it does not load: $OUT/build.log)"
  python3 -m svdquant_hf.ops.build --aot --verbose >> "$OUT/build.log" 2>&1
  echo "build rc=$? in $(( $(date +%s) - t0 )) s"
fi
