#!/usr/bin/env bash
# Session 16 run 4: paired with a CTA-scope release on the peer's barrier (s16-paired-cta.patch:
# CUTLASS's consumer release form) and the same without multicast (nomccta), against HEAD's
# launch without (c1) and with 2-CTA clusters (c2); then paired's GPU tests.
set -o pipefail
R=$OUT/r4; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
CFGS=(--config 128,8192,128,1,1 --config 128,16384,128,2,1 --config 128,8192,128,2,1 --regime b1_64k_h128 --regime skew_b64 --regime mtp4_b32)
for rep in 1 2; do
  for c in 1 2; do
    FLASHMLA_CLUSTER=$c timeout 60 ./build/bench_decode --no-matrix "${CFGS[@]}" --json $R/ab_c${c}_r$rep.json > $R/ab_c${c}_r$rep.log 2>&1; echo c$c rc=$? $(el)
  done
  for b in pairedcta nomccta; do
    timeout 60 build/exp4/bench_$b --no-matrix "${CFGS[@]}" --json $R/ab_${b}_r$rep.json > $R/ab_${b}_r$rep.log 2>&1; echo $b rc=$? $(el)
  done
done
python3 build/exp4/ab_table.py $R ab | tee $R/ab_table.txt
echo "== test_gpu_pairedcta $(el)"
timeout 150 build/exp4/test_gpu_pairedcta > $R/test_gpu_pairedcta.log 2>&1; echo rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_pairedcta.log | head
echo "== done $(el)"
(cd $OUT && tar czf s16run4.tgz r4 && rm -rf r4)
