#!/usr/bin/env bash
# Session 18 run 2: the landed tree (build/ as carried): C++ GPU tests, pytest, the 48-config
# matrix (device_suite.sh full), the FP8 cache tests and the benchmark tables (BF16 and FP8).
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r2; mkdir -p $R
t0=${T0:-$(date +%s)}
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
timeout 60 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 cache rc=$?; grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
timeout 80 ./build/bench_decode --matrix --latency --json $R/bench-h100.json > $R/bench.log 2>&1; echo bench rc=$? $(el)
timeout 80 ./build/bench_decode --matrix --latency --fp8 --json $R/bench-fp8-h100.json > $R/bench_fp8.log 2>&1; echo bench fp8 rc=$? $(el)
grep -E "b1_|skew|quarter|mtp4|b256" $R/bench.log | head -8
left=$(( 590 - ($(date +%s)-t0) )); echo left=$left
OUT=$R timeout $left bash benchmarks/device_suite.sh full > $R/suite.log 2>&1; echo suite rc=$?
grep -E "^==|PASSED|FAILED|passed|failed" $R/suite.log | tail -12
echo "== done $(el)"
(cd $OUT && tar czf s18run2.tgz r2 && rm -rf r2)
