#!/usr/bin/env bash
# Session 17 run 4 (little device time left): the final HEAD (16-bit partials, PDL combine with
# one chunk, FP8 partial pair stores): C++ GPU tests, FP8 cache tests, the latency regimes and
# issue rows (BF16, FP8), then as much of the suite as the time allows.
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r4; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
L=${1:-230}
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 ./build/test_gpu > $R/test_gpu.log 2>&1; echo test_gpu rc=$? $(el)
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu.log | head -5
timeout 30 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 cache rc=$? $(el); grep -E "^\[  (PASSED|FAILED) " $R/fp8.log
timeout 40 ./build/bench_decode --no-matrix --latency --config 128,4096,16,1,1 --config 128,4096,64,1,1 --config 128,8192,64,1,1 --config 128,8192,128,1,1 --config 128,16384,128,2,1 --json $R/bench-v21-h100.json > $R/bench.log 2>&1; echo bench rc=$? $(el)
timeout 30 ./build/bench_decode --no-matrix --latency --fp8 --config 128,4096,16,1,1 --config 128,8192,16,1,1 --config 128,16384,16,1,1 --json $R/bench-v21-fp8-h100.json > $R/bench_fp8.log 2>&1; echo bench fp8 rc=$? $(el)
left=$(( L - ($(date +%s)-t0) )); echo left=$left
[ $left -gt 60 ] && { OUT=$R timeout $left bash benchmarks/device_suite.sh full > $R/suite.log 2>&1; echo suite rc=$?; }
grep -E "^==|PASSED|FAILED|passed|failed" $R/suite.log | tail -8
echo "== done $(el)"
