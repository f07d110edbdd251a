#!/usr/bin/env bash
# Session 16 run 3: the wide kernel launched as clusters of its query tiles (HEAD + the
# FLASHMLA_CLUSTER knob: 1 = none (v19), 2 = default, 4), three repeats interleaved; paired
# (session 14's multicast pairs) and pairednomc (the same coupled releases, no multicast) at
# 128+ rows; then the GPU tests and the full suite on the default (clusters of 2).
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r3; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
VAR31=10186:8346:3332:12068:9479:9722:8978:15042:12235:13570:7028:6301:3840:7200:1:15356:8884:8650:12057:6655:9358:11669:1448:15851:8898:10967:3751:5569:15687:5949:6489:10372:14546:1:14746:9458:12216:3816:9635:15358:7851:5524:6367:5961:11773:9145:6112:11741:3485:1983:16384:5493:15420:7896:7308:10585:4524:4581:7363:6577:11438:16384:3115:4435:11602:10529:13200:5017:10900:8049:1131:10252:1399:10653:6291:7416:16384:14997:10161:10025:4887:13761:11023:4497:973:8276:7499:12084:3767:4402:10131:8665:12453:13209:4324:1:8537:5069:9346:1:7834:8691:5829:10549:8749:9304:13995:13984:13566:9937:8916:10777:9675:5076:10014:12319:6498:3494:10831:4990:1757:7212:1872:9749:6045:8645:13303:13207
CFGS=(--config 128,8192,128,1,1 --config 128,16384,128,2,1 --config 128,8192,128,2,1 --config 128,$VAR31,128,2,1 --config 128,8192,64,1,1 --regime b1_64k_h128 --regime skew_b64 --regime quarter_empty_b16 --regime mtp4_b32 --regime b1_8k_h16)
FP8=(--fp8 --config 128,8192,128,1,1 --config 128,4096,64,2,1)
P16=(--page 16 --config 128,4096,128,1,1 --config 128,4096,128,2,1)
for rep in 1 2 3; do
  for c in 1 2 4; do
    FLASHMLA_CLUSTER=$c timeout 60 ./build/bench_decode --no-matrix "${CFGS[@]}" --json $R/ab_c${c}_r$rep.json > $R/ab_c${c}_r$rep.log 2>&1; echo c$c rc=$? $(el)
    FLASHMLA_CLUSTER=$c timeout 40 ./build/bench_decode --no-matrix "${FP8[@]}" --json $R/fp8_c${c}_r$rep.json > $R/fp8_c${c}_r$rep.log 2>&1; echo fp8 c$c rc=$? $(el)
    FLASHMLA_CLUSTER=$c timeout 40 ./build/bench_decode --no-matrix "${P16[@]}" --json $R/p16_c${c}_r$rep.json > $R/p16_c${c}_r$rep.log 2>&1; echo p16 c$c rc=$? $(el)
  done
  if [ $rep -le 2 ]; then
    for b in paired pairednomc; do
      timeout 40 build/exp3/bench_$b --no-matrix --config 128,8192,128,1,1 --config 128,16384,128,2,1 --regime skew_b64 --json $R/ab_${b}_r$rep.json > $R/ab_${b}_r$rep.log 2>&1; echo $b rc=$? $(el)
    done
  fi
done
for x in ab fp8 p16; do python3 build/exp3/ab_table.py $R $x; done | tee $R/ab_table.txt
echo "== test_gpu with clusters of 4 (the suite runs it with the default 2) $(el)"
FLASHMLA_CLUSTER=4 timeout 120 ./build/test_gpu > $R/test_gpu_c4.log 2>&1; echo c4 rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu_c4.log | head
timeout 60 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
left=$(( 585 - ($(date +%s)-t0) )); echo left=$left
OUT=$R timeout $left bash benchmarks/device_suite.sh full > $R/suite.log 2>&1; echo suite rc=$?
grep -E "^==|PASSED|FAILED|passed|failed" $R/suite.log | tail -12
echo "== done $(el)"
(cd $OUT && tar czf s16run3.tgz r3 && rm -rf r3)
