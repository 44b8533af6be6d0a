#!/usr/bin/env bash
# One hash of everything the kernels' build reads (csrc/ and the build flags in svdquant_hf/ops/build.py): the key
# that tells whether .prebuilt/ (benchmarks/prebuild_device.sh) matches this tree.
set -euo pipefail
export LC_ALL=C
ls csrc/*.cu csrc/*.cpp csrc/*.cuh csrc/*.h svdquant_hf/ops/build.py | sort | xargs cat | sha256sum | cut -c1-64
