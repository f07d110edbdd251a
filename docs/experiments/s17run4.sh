#!/usr/bin/env bash
# Session 17 run 4: the final HEAD (16-bit partials, PDL combine with one chunk): the full
# suite, the FP8 cache tests and the v21 tables.
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r4; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
timeout 60 ./build/bench_decode --matrix --latency --json $R/bench-v21-h100.json > $R/bench.log 2>&1; echo bench rc=$? $(el)
timeout 60 ./build/bench_decode --matrix --latency --fp8 --json $R/bench-v21-fp8-h100.json > $R/bench_fp8.log 2>&1; echo bench fp8 rc=$? $(el)
timeout 60 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 cache rc=$?; grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
left=$(( 560 - ($(date +%s)-t0) )); echo left=$left
OUT=$R timeout $left bash benchmarks/device_suite.sh full > $R/suite.log 2>&1; echo suite rc=$?
grep -E "^==|PASSED|FAILED|passed|failed" $R/suite.log | tail -12
echo "== done $(el)"
(cd $OUT && tar czf s17run4.tgz r4 && rm -rf r4)
