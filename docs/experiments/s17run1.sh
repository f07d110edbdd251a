#!/usr/bin/env bash
# Session 17 run 1: (1) FP8 small kernel on the H100, what bounds it at 16 rows: probes that
# skip O^T (fp8nov), S^T (fp8nos) or both (fp8none), and fp8erel (a stage released after the
# values warps' last V ldmatrix), against HEAD, BF16 beside them; (2) fp8erel's GPU tests;
# (3) the v20 benchmark tables (BF16, FP8); (4) ncu of FP8 / BF16 h16 s8k if time is left.
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r1; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
left() { echo $(( 585 - ($(date +%s)-t0) )); }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader | tee $R/smi.txt
F=(--config 128,4096,16,1,1 --config 128,16384,16,1,1 --config 128,8192,8,1,1 --config 128,8192,32,1,1)
for rep in 1 2 3; do
  timeout 60 ./build/bench_decode --no-matrix --fp8 "${F[@]}" --json $R/f_head_r$rep.json > $R/f_head_r$rep.log 2>&1; echo head rc=$? $(el)
  timeout 60 build/exp1/bench_fp8erel --no-matrix --fp8 "${F[@]}" --json $R/f_erel_r$rep.json > $R/f_erel_r$rep.log 2>&1; echo erel rc=$? $(el)
  timeout 60 ./build/bench_decode --no-matrix "${F[@]}" --json $R/f_bf16_r$rep.json > $R/f_bf16_r$rep.log 2>&1; echo bf16 rc=$? $(el)
  if [ $rep -le 2 ]; then
    for v in nov nos none; do
      timeout 60 build/exp1/bench_fp8$v --no-matrix --fp8 "${F[@]}" --json $R/f_$v\_r$rep.json > $R/f_$v\_r$rep.log 2>&1; echo $v rc=$? $(el)
    done
  fi
done
python3 build/exp1/ab_table.py $R f | tee $R/ab_table.txt
timeout 150 build/exp1/test_gpu_fp8erel --gtest_filter='*Fp8*:*fp8*' > $R/test_gpu_fp8erel.log 2>&1; echo erel tests rc=$? $(el)
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_fp8erel.log | head
[ $(left) -gt 150 ] && { timeout 140 ./build/bench_decode --matrix --latency --json $R/bench-v20-h100.json > $R/bench.log 2>&1; echo bench rc=$? $(el); }
[ $(left) -gt 120 ] && { timeout 110 ./build/bench_decode --matrix --latency --fp8 --json $R/bench-v20-fp8-h100.json > $R/bench_fp8.log 2>&1; echo bench fp8 rc=$? $(el); }
if [ $(left) -gt 90 ] && command -v ncu >/dev/null; then
  timeout 80 ncu --set full -k regex:small -s 3 -c 1 ./build/bench_decode --no-matrix --fp8 --config 128,8192,16,1,1 --iters 5 > $R/ncu_fp8_h16.txt 2>&1; echo ncu rc=$? $(el)
fi
echo "== done $(el)"
(cd $OUT && tar czf s17run1.tgz r1 && rm -rf r1)
