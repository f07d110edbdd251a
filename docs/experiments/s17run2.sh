#!/usr/bin/env bash
# Session 17 run 2: (1) is the FP8 stream's bandwidth deficit the box pattern? fp8raw (one
# whole-record box per tile, math on the wrong layout) and fp8rawnone (the same, no math)
# against HEAD and fp8none, BF16 beside them, 3 repeats; (2) the full suite on HEAD (seqlen.cuh).
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r2; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
F=(--config 128,4096,16,1,1 --config 128,16384,16,1,1 --config 128,8192,8,1,1 --config 128,8192,16,1,1)
for rep in 1 2 3; do
  timeout 60 ./build/bench_decode --no-matrix --fp8 "${F[@]}" --json $R/f_head_r$rep.json > $R/f_head_r$rep.log 2>&1; echo head rc=$? $(el)
  for v in raw rawnone none; do
    timeout 60 build/exp2/bench_fp8$v --no-matrix --fp8 "${F[@]}" --json $R/f_$v\_r$rep.json > $R/f_$v\_r$rep.log 2>&1; echo $v rc=$? $(el)
  done
  timeout 60 ./build/bench_decode --no-matrix "${F[@]}" --json $R/f_bf16_r$rep.json > $R/f_bf16_r$rep.log 2>&1; echo bf16 rc=$? $(el)
done
python3 build/exp2/ab_table.py $R f | tee $R/ab_table.txt
timeout 60 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 cache rc=$?; grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
left=$(( 585 - ($(date +%s)-t0) )); echo left=$left
OUT=$R timeout $left bash benchmarks/device_suite.sh full > $R/suite.log 2>&1; echo suite rc=$?
grep -E "^==|PASSED|FAILED|passed|failed" $R/suite.log | tail -12
echo "== done $(el)"
(cd $OUT && tar czf s17run2.tgz r2 && rm -rf r2)
