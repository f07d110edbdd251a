#!/usr/bin/env bash
# Prepared in session 15 (no device was lent then). build/ = HEAD 0393d01 (v19 kernels plus the
# robustness guards of that commit); every variant in build/exp is that HEAD plus its patch.
# (1) A/B at 128+ rows: head, warm (s15-warm_l2.patch: one L2 bulk prefetch of the next tile by
#     query tile 0's producer), pfall (warm also at one query tile), pf2 (two tiles ahead),
#     clusteronly (HEAD as 2-CTA clusters, prints max active clusters), paired (s14-paired),
#     pairedpf (paired + warm), erel (WG0 releases stage a before waiting for P_b; timing only). (2) GPU tests of warm and pairedpf. (3) The full suite: on warm
#     (its core and test binary copied over build/) if warm wins h128 s8k by > 3%, else on HEAD.
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader | tee $R/smi.txt
CFGS=(--config 128,8192,128,1,1 --config 128,16384,128,2,1 --config 128,8192,128,2,1 --config 128,8192,64,1,1 --regime b1_64k_h128 --regime skew_b64)
echo "== A/B $(el)"
for rep in 1 2; do
  for b in ./build/bench_decode build/exp1/bench_warm build/exp1/bench_pfall build/exp1/bench_pf2 build/exp1/bench_clusteronly build/exp1/bench_paired build/exp1/bench_pairedpf build/exp1/bench_erel; do
    tag=$(basename $b)
    timeout 40 $b --no-matrix "${CFGS[@]}" --json $R/ab_${tag}_r$rep.json > $R/ab_${tag}_r$rep.log 2>&1; echo $tag rc=$? $(el)
  done
done
grep -h clusteronly $R/ab_bench_clusteronly_r1.log | head -2
python3 - $R <<'PY' | tee $R/ab_table.txt
import json,sys,glob
R=sys.argv[1]
runs={}
for f in sorted(glob.glob(R+'/ab_*_r*.json')):
    tag=f.split('/')[-1][3:-5].replace('bench_','').replace('_r','.')
    try: res=json.load(open(f))["results"]
    except Exception as e: print(f,e); continue
    for r in res:
        k="%s b%d h%d sq%d sum%d"%(r["regime"][:10],r["b"],r["h_q"],r["s_q"],r["sum_sk"])
        runs.setdefault(k,{})[tag]=r["decode_us"]
tags=sorted({t for v in runs.values() for t in v})
print("config".ljust(34)," ".join(t[:9].rjust(9) for t in tags))
for k,v in runs.items():
    print(k[:34].ljust(34)," ".join(("%9.1f"%v[t]) if t in v else "        -" for t in tags))
# warm wins if its best h128 s8k s_q1 time beats HEAD's best by > 3%
k=[k for k in runs if " h128 sq1 " in k and "sum1048576" in k]
if k:
    v=runs[k[0]]
    h=min(v.get("decode.1",9e9),v.get("decode.2",9e9)); w=min(v.get("warm.1",9e9),v.get("warm.2",9e9))
    open(R+"/warm_wins","w").write("1" if w < 0.97*h else "0")
    print("warm vs head h128 s8k: %.1f vs %.1f"%(w,h))
PY
if [ "$(cat $R/warm_wins 2>/dev/null)" != 1 ]; then  # otherwise the suite runs it
  echo "== test_gpu_warm $(el)"
  timeout 90 build/exp1/test_gpu_warm > $R/test_gpu_warm.log 2>&1; echo rc=$?
  grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_warm.log | head
fi
echo "== test_gpu_pairedpf $(el)"
timeout 90 build/exp1/test_gpu_pairedpf > $R/test_gpu_pairedpf.log 2>&1; echo rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_pairedpf.log | head
# The suite always runs: HEAD (0393d01) has device-side guards no GPU has run yet.
if [ "$(cat $R/warm_wins 2>/dev/null)" = 1 ]; then
  echo "== suite on warm (HEAD + s15-warm_l2.patch) $(el)"
  cp build/exp1/libflashmla_warm.a build/libflashmla.a && cp build/exp1/test_gpu_warm build/test_gpu
else
  echo "== suite on HEAD $(el)"
fi
timeout 60 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
left=$(( 570 - ($(date +%s)-t0) )); echo left=$left
OUT=$R timeout $left bash benchmarks/device_suite.sh full > $R/suite.log 2>&1; echo suite rc=$?
grep -E "^==|PASSED|FAILED|passed|failed" $R/suite.log | tail -12
echo "== done $(el)"
(cd $OUT && tar czf s16run1.tgz r && rm -rf r)
