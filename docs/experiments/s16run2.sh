#!/usr/bin/env bash
# Prepared in session 15: per-tile refill trace of the wide kernel (s15-trace.patch over HEAD =
# bench_trace, over HEAD + warm = bench_tracewarm). Per config: FLASHMLA_TRACE dumps the last
# decode's clock64 events; build/exp/trace_stats.py prints the S-owner wait, the refill window and
# the latency from the RoPE sub-tile's issue to S having all sub-tiles, in SM clocks.
set -o pipefail
R=$OUT/r2; mkdir -p $R
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
CFGS=(--config 128,8192,128,1,1 --config 128,16384,128,2,1 --config 128,8192,64,1,1 --regime b1_64k_h128)
for b in bench_trace bench_tracewarm; do
  FLASHMLA_TRACE=$R/$b timeout 60 build/exp/$b --no-matrix "${CFGS[@]}" > $R/$b.log 2>&1; echo $b rc=$? t=$(( $(date +%s)-t0 ))
  grep -E "^\S+ +[0-9]+ " $R/$b.log | head -8
done
# FP8 cache, wide kernel (64 and 128 rows): raw-load latency, expansion time, S wait.
FLASHMLA_TRACE=$R/fp8 timeout 60 build/exp/bench_trace --no-matrix --fp8 --config 128,8192,64,1,1 --config 128,8192,128,1,1 > $R/fp8.log 2>&1; echo fp8 rc=$?
for i in 0 1 2 3; do
  python3 build/exp/trace_stats.py $R/bench_trace_$i.bin $R/bench_tracewarm_$i.bin 2>&1
done | tee $R/trace_stats.txt
python3 build/exp/trace_stats.py $R/fp8_0.bin $R/fp8_1.bin 2>&1 | tee -a $R/trace_stats.txt
rm -f $R/*.bin
(cd $OUT && tar czf s16run2.tgz r2 && rm -rf r2)
