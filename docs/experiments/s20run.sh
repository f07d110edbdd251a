#!/usr/bin/env bash
# Session 20's GPU call (build first with docs/experiments/s20build.sh; carry build/exp20).
# 1. v23's tests: C++ GPU tests, FP8 cache tests, the binding against v23's core, pytest, the
#    48-config matrix in BF16 and with an FP8 cache.
# 2. A/B, two interleaved repeats: v22 (session 19's HEAD), v23, p128 (v23 through ptxas 12.8);
#    BF16 16-row and wide configs, FP8 16-row configs (v22, v23).
# 3. v23's tables (bench --matrix --latency, BF16 and FP8).
# 4. ncu of the wide kernel at b=128 s_k=8192 h_q=128 (stall reasons, pipes), for the next
#    design step; text only.
# Results in $OUT/s20run.tgz (r/), also packed after each step.
set -o pipefail
export PYTHONUNBUFFERED=1
E=build/exp20
R=$OUT/r; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
pack() { (cd $OUT && tar czf s20run.tgz r); }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
L_4096_16_1=6734:7064:4231:2530:1859:4160:2002:1153:4504:4369:5215:2224:4106:3963:1012:5197:4752:8192:4511:3799:6620:4503:5957:3347:4542:6193:5521:4359:1879:5007:4253:5571:4538:6324:3990:4509:5461:1870:3273:3071:8152:3905:5431:5364:3520:919:6072:3262:5566:1422:3199:6669:7026:1428:1366:4005:5587:4424:4717:2070:5297:6383:3203:1160:2541:5655:545:3907:2066:3827:3595:4128:7170:4957:6827:3806:3113:4871:1:4014:4424:1566:5047:2950:1:3659:2091:3029:3784:6657:4307:4037:4892:384:6635:1890:4995:1788:2096:3284:7978:5524:2858:3513:1737:4026:2922:5574:1316:3410:2371:2624:5552:4354:5294:6531:6450:1286:5195:488:3965:8026:3699:3339:4444:4132:4150:2545
L_4096_64_1=2169:4552:6745:7238:6515:4193:4770:3594:1423:3147:6029:4604:3448:1944:3909:2913:4170:5086:1:3912:1117:2194:1571:6359:5460:5109:2586:1168:3322:4510:3948:5494:3369:7754:5429:8154:4595:3623:2371:5739:6226:4412:4926:3542:3241:3500:266:2031:4172:4348:6304:5374:4953:4190:1:4190:2286:5089:3512:3401:2990:3490:94:832:6552:4966:3181:3374:3332:8192:5137:4082:2707:1:4329:6901:5979:4618:2840:1665:4230:3233:1749:7447:2158:2964:1:7549:3744:3918:4654:2354:2798:4671:2392:4721:6544:5624:6955:6259:7618:4662:4945:1849:3706:2598:3928:1947:4726:8192:2488:5249:5348:2579:3474:3006:4972:2775:8192:5834:6408:8192:6882:3853:4820:4150:4618:6060
L_8192_64_1=1487:14732:9766:5825:12226:3987:16384:10857:8067:11690:3342:10698:12621:12587:10617:3924:9773:2677:9364:5884:5282:11769:16384:14887:6969:6786:4514:6086:9093:10444:6674:8574:3646:6290:14022:14177:10627:8826:9377:5552:3529:10596:3796:10075:3490:8052:15244:10862:7929:9445:1888:12288:5067:4914:5334:8589:5386:5621:10181:9040:13389:11611:13267:3555:8632:10460:11966:6979:10842:12818:4439:4723:4864:9228:3664:8343:6324:4134:852:16384:13469:12598:1760:11873:6817:3080:5914:6304:14943:8875:8081:10176:10252:3117:13048:9193:12429:15213:6915:16384:6934:7117:1:13977:7471:5927:5981:10609:12769:11235:7221:5497:480:5586:10150:6620:16247:12290:7051:10380:9161:5133:6939:2041:6986:12583:6372:15388
L_8192_128_2=10186:8346:3332:12068:9479:9722:8978:15042:12235:13570:7028:6301:3840:7200:1:15356:8884:8650:12057:6655:9358:11669:1448:15851:8898:10967:3751:5569:15687:5949:6489:10372:14546:1:14746:9458:12216:3816:9635:15358:7851:5524:6367:5961:11773:9145:6112:11741:3485:1983:16384:5493:15420:7896:7308:10585:4524:4581:7363:6577:11438:16384:3115:4435:11602:10529:13200:5017:10900:8049:1131:10252:1399:10653:6291:7416:16384:14997:10161:10025:4887:13761:11023:4497:973:8276:7499:12084:3767:4402:10131:8665:12453:13209:4324:1:8537:5069:9346:1:7834:8691:5829:10549:8749:9304:13995:13984:13566:9937:8916:10777:9675:5076:10014:12319:6498:3494:10831:4990:1757:7212:1872:9749:6045:8645:13303:13207
C16=(--config 128,8192,16,1,1 --config 128,$L_4096_16_1,16,1,1 --config 4,8192,16,1,1 --regime b1_8k_h16 --regime b1_128k_h16)
CW=(--config 128,$L_4096_64_1,64,1,1 --config 128,$L_8192_64_1,64,1,1 --config 128,$L_8192_128_2,128,2,1 --config 128,8192,128,1,0 --regime b1_64k_h128 --regime skew_b64 --regime quarter_empty_b16 --regime b256_short --regime mtp4_b32)
timeout 60 $E/test_fp8_cache_v23 > $R/fp8.log 2>&1; echo fp8 cache rc=$?; grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
timeout 150 $E/test_gpu_v23 > $R/test_gpu.log 2>&1; echo test_gpu rc=$? $(el); grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu.log | head -5
pack
ab() {  # one interleaved repeat
  for x in v22 v23 p128; do
    timeout 90 $E/bench_$x --no-matrix "${C16[@]}" "${CW[@]}" --json $R/a_${x}_r$1.json > $R/a_${x}_r$1.log 2>&1; echo $x rc=$? $(el)
  done
  for x in v22 v23; do
    timeout 60 $E/bench_$x --no-matrix --fp8 "${C16[@]}" --json $R/f_${x}_r$1.json > $R/f_${x}_r$1.log 2>&1; echo fp8 $x rc=$? $(el)
  done
}
tables() { for x in a f; do for f in decode_us sched_decode_us; do python3 $E/ab_table.py $R $x $f; done; done; }
ab 1
pack
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
FLASHMLA_PREBUILT_CORE=$E/libflashmla_v23.a python3 setup.py build_ext --inplace > $R/binding_build.log 2>&1; echo binding rc=$? $(el)
timeout 150 python3 -m pytest tests/python -rs -q -x > $R/pytest.log 2>&1; echo pytest rc=$?; tail -n 1 $R/pytest.log
timeout 120 python3 tests/test_flash_mla.py --json $R/matrix.json > $R/matrix.log 2>&1; echo matrix rc=$?; tail -n 1 $R/matrix.log
timeout 120 python3 tests/test_flash_mla.py --fp8 --json $R/matrix_fp8.json > $R/matrix_fp8.log 2>&1; echo matrix fp8 rc=$?; tail -n 1 $R/matrix_fp8.log
pack
ab 2
tables | tee $R/ab_table.txt
pack
timeout 60 $E/bench_v23 --matrix --latency --json $R/bench-h100.json > $R/bench.log 2>&1; echo bench rc=$? $(el)
timeout 60 $E/bench_v23 --matrix --latency --fp8 --json $R/bench-fp8-h100.json > $R/bench_fp8.log 2>&1; echo bench fp8 rc=$? $(el)
pack
timeout 150 ncu --clock-control none -k regex:mla_decode_kernel --launch-skip 4 --launch-count 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters \
  --page details $E/bench_v23 --no-matrix --config 128,8192,128,1,1 --iters 5 > $R/ncu.txt 2>&1; echo ncu rc=$? $(el)
echo "== done $(el)"
pack; rm -rf $R
