#!/usr/bin/env bash
# Session 16 run 5: FP8 wide path, sub-tiles released to S per expansion phase
# (s16-fp8-arrive.patch) against HEAD; then its C++ GPU tests.
set -o pipefail
R=$OUT/r5; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name --format=csv,noheader
CFGS=(--fp8 --config 128,8192,64,1,1 --config 128,8192,128,1,1 --config 128,4096,64,2,1 --config 128,8192,16,1,1)
for rep in 1 2; do
  timeout 40 ./build/bench_decode --no-matrix "${CFGS[@]}" --json $R/f_head_r$rep.json > $R/f_head_r$rep.log 2>&1; echo head rc=$? $(el)
  timeout 40 build/exp5/bench_fp8arrive --no-matrix "${CFGS[@]}" --json $R/f_arrive_r$rep.json > $R/f_arrive_r$rep.log 2>&1; echo arrive rc=$? $(el)
done
python3 build/exp5/ab_table.py $R f | tee $R/ab_table.txt
timeout 120 build/exp5/test_gpu_fp8arrive > $R/test_gpu_fp8arrive.log 2>&1; echo test rc=$? $(el)
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_fp8arrive.log | head
(cd $OUT && tar czf s16run5.tgz r5 && rm -rf r5)
