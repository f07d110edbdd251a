#!/usr/bin/env bash
# Session 19 run 1: the tree with one PDL launch helper, cached launch attributes and the plan's
# overhead 2 for <= 16 rows (build/) against session 18 run 1's "both" build (overhead 5 for all
# rows, per-launch attribute queries):
# the 16-row configs, 2 interleaved repeats; the FP8 cache tests, the C++ GPU tests, the tables,
# pytest and the 48-config matrix.
set -o pipefail
export PYTHONUNBUFFERED=1
R=$OUT/r1; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/smi.txt
L_4096_16_1=6734:7064:4231:2530:1859:4160:2002:1153:4504:4369:5215:2224:4106:3963:1012:5197:4752:8192:4511:3799:6620:4503:5957:3347:4542:6193:5521:4359:1879:5007:4253:5571:4538:6324:3990:4509:5461:1870:3273:3071:8152:3905:5431:5364:3520:919:6072:3262:5566:1422:3199:6669:7026:1428:1366:4005:5587:4424:4717:2070:5297:6383:3203:1160:2541:5655:545:3907:2066:3827:3595:4128:7170:4957:6827:3806:3113:4871:1:4014:4424:1566:5047:2950:1:3659:2091:3029:3784:6657:4307:4037:4892:384:6635:1890:4995:1788:2096:3284:7978:5524:2858:3513:1737:4026:2922:5574:1316:3410:2371:2624:5552:4354:5294:6531:6450:1286:5195:488:3965:8026:3699:3339:4444:4132:4150:2545
C=(--config 128,4096,16,1,1 --config 128,8192,16,1,1 --config 128,16384,16,1,1 --config 128,$L_4096_16_1,16,1,1 --config 4,8192,16,1,1 --regime b1_8k_h16 --regime b256_short)
ab() {  # one interleaved repeat of the A/B
  for b in build/exp7/bench_both build/bench_decode; do
    tag=$(basename $b)
    timeout 60 $b --no-matrix "${C[@]}" --json $R/a_${tag}_r$1.json > $R/a_${tag}_r$1.log 2>&1; echo $tag rc=$? $(el)
    timeout 60 $b --no-matrix --fp8 "${C[@]}" --json $R/f_${tag}_r$1.json > $R/f_${tag}_r$1.log 2>&1; echo fp8 $tag rc=$? $(el)
  done
}
timeout 60 ./build/test_fp8_cache > $R/fp8.log 2>&1; echo fp8 cache rc=$?; grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/fp8.log | head -3
timeout 120 ./build/test_gpu > $R/test_gpu.log 2>&1; echo test_gpu rc=$? $(el); grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu.log | head -5
ab 1
for x in a f; do python3 build/exp7/ab_table.py $R $x; done
timeout 60 ./build/bench_decode --matrix --latency --json $R/bench-h100.json > $R/bench.log 2>&1; echo bench rc=$? $(el)
(cd $OUT && tar czf s19run1.tgz r1)
# pytest and the 48-config matrix (device_suite.sh's steps without the C++ tests, run above).
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
FLASHMLA_PREBUILT_CORE=build/libflashmla.a python3 setup.py build_ext --inplace > $R/binding_build.log 2>&1; echo binding rc=$? $(el)
timeout 150 python3 -m pytest tests/python -rs -q -x > $R/pytest.log 2>&1; echo pytest rc=$?; tail -2 $R/pytest.log
timeout 150 python3 tests/test_flash_mla.py --json $R/matrix.json > $R/matrix.log 2>&1; echo matrix rc=$?; tail -2 $R/matrix.log
(cd $OUT && tar czf s19run1.tgz r1)
timeout 60 ./build/bench_decode --matrix --latency --fp8 --json $R/bench-fp8-h100.json > $R/bench_fp8.log 2>&1; echo bench fp8 rc=$? $(el)
ab 2
for x in a f; do python3 build/exp7/ab_table.py $R $x; done | tee $R/ab_table.txt
echo "== done $(el)"
(cd $OUT && tar czf s19run1.tgz r1 && rm -rf r1)
