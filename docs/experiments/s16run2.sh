#!/usr/bin/env bash
# Prepared in session 15: per-tile refill trace of the wide kernel (s15-trace.patch over HEAD =
# bench_trace, over HEAD + warm = bench_tracewarm). Per config: FLASHMLA_TRACE dumps the last
# decode's clock64 events; build/exp2/trace_stats.py prints the S-owner wait, the refill window and
# the latency from the RoPE sub-tile's issue to S having all sub-tiles, in SM clocks.
set -o pipefail
R=$OUT/r2; mkdir -p $R
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
CFGS=(--config 128,8192,128,1,1 --config 128,16384,128,2,1 --config 128,8192,64,1,1 --regime b1_64k_h128)
for b in bench_trace bench_tracewarm; do
  FLASHMLA_TRACE=$R/$b timeout 60 build/exp2/$b --no-matrix "${CFGS[@]}" > $R/$b.log 2>&1; echo $b rc=$? t=$(( $(date +%s)-t0 ))
  grep -E "^\S+ +[0-9]+ " $R/$b.log | head -8
done
# FP8 cache, wide kernel (64 and 128 rows): raw-load latency, expansion time, S wait.
FLASHMLA_TRACE=$R/fp8 timeout 60 build/exp2/bench_trace --no-matrix --fp8 --config 128,8192,64,1,1 --config 128,8192,128,1,1 > $R/fp8.log 2>&1; echo fp8 rc=$?
for i in 0 1 2 3; do
  python3 build/exp2/trace_stats.py $R/bench_trace_$i.bin $R/bench_tracewarm_$i.bin 2>&1
done | tee $R/trace_stats.txt
python3 build/exp2/trace_stats.py $R/fp8_0.bin $R/fp8_1.bin 2>&1 | tee -a $R/trace_stats.txt
rm -f $R/*.bin
# FP8 wide path: fp8poll (s15-fp8poll.patch: the producer's thread 0 requests the next tile at the
# expansion's barriers as soon as its stage is free; today it asks only after the expansion, so
# a tile costs expansion + load latency). Prediction: FP8 h64 s8k 462 -> ~300 us; 16 rows unchanged.
FP8CFG=(--fp8 --config 128,8192,64,1,1 --config 128,8192,128,1,1 --config 128,4096,32,2,1 --config 128,8192,16,1,1)
for rep in 1 2; do
  for b in ./build/bench_decode build/exp2/bench_fp8poll; do
    timeout 40 $b --no-matrix "${FP8CFG[@]}" --json $R/fp8ab_$(basename $b)_r$rep.json > $R/fp8ab_$(basename $b)_r$rep.log 2>&1; echo $b rc=$?
  done
done
python3 - $R <<'PY'
import json,sys,glob
R=sys.argv[1]; runs={}
for f in sorted(glob.glob(R+'/fp8ab_*.json')):
    tag=f.split('/')[-1][6:-5].replace('bench_','')
    for r in json.load(open(f))["results"]:
        k="b%d h%d sq%d sk%d"%(r["b"],r["h_q"],r["s_q"],r["sum_sk"]//r["b"]); runs.setdefault(k,{})[tag]=r["decode_us"]
tags=sorted({t for v in runs.values() for t in v})
print("FP8 config".ljust(26)," ".join(t.rjust(12) for t in tags))
for k,v in runs.items(): print(k.ljust(26)," ".join(("%12.1f"%v[t]) if t in v else "           -" for t in tags))
PY
timeout 120 build/exp2/test_gpu_fp8poll > $R/test_gpu_fp8poll.log 2>&1; echo test_gpu_fp8poll rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_fp8poll.log | head
(cd $OUT && tar czf s16run2.tgz r2 && rm -rf r2)
