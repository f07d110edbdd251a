#!/usr/bin/env bash
# Session 22's variants (build: docs/experiments/s22build.sh; carry build/exp23).
# TESTS=1: the tests of `all` (quarter + merge + two-block small kernel + its vector epilogue): C++ GPU, FP8 cache,
# binding + pytest against libflashmla_all.a, the 48-config matrix. Then the A/B of $VARIANTS
# ($REPS interleaved repeats) over the wide, 16-row and 32-row configs and the latency regimes;
# FP8 v23/all (one repeat, FP8=0 skips); ncu of the combine for $NCUV (NCU=0 skips).
# About 28 s per variant and repeat (24 configs). First call: TESTS=1 REPS=0 FP8=0 NCU=0 (the
# tests only, ~6 min); second: TESTS=0 REPS=1 NCU=0 (every variant once, FP8, ~6 min); third:
# TESTS=0 REPS=1 FP8=0 (the second repeat, then ncu; name its files r2: REP0=1).
set -o pipefail
VARIANTS=${VARIANTS:-v23orig v23 comb quarter quarter4 merge merge4r tb tbov2 tbvec all}
export PYTHONUNBUFFERED=1
E=build/exp23
R=$OUT/r; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
pack() { (cd $OUT && tar czf s22run.tgz r); }
src() { sed -n "s/^$1=//p" docs/experiments/s19run.sh; }
L16=$(src L_4096_16_1); L64a=$(src L_4096_64_1); L64=$(src L_8192_64_1); L128=$(src L_8192_128_2)
C16=(--config 128,8192,16,1,1 --config 128,$L16,16,1,1 --config 4,8192,16,1,1 --config 32,8192,16,1,1 --regime b1_8k_h16 --regime b1_128k_h16)
# 32 rows: fixed and varied lengths (h_q = 32, and h_q = 16 x s_q = 2), b = 1 and 4, 16-token pages.
C32=(--config 128,4096,32,1,1 --config 128,8192,32,1,1 --config 128,$L16,32,1,1 --config 128,$L64,32,1,1 --config 128,$L64,16,2,1 --config 1,8192,32,1,1 --config 1,32768,16,2,1 --config 4,8192,32,1,1)
CW=(--config 128,$L64a,64,1,1 --config 128,$L64,64,1,1 --config 128,$L128,128,2,1 --config 128,8192,128,1,0 --config 128,16384,128,2,1 --regime b1_64k_h128 --regime skew_b64 --regime quarter_empty_b16 --regime b256_short --regime mtp4_b32)
if [ "${TESTS:-1}" = 1 ]; then
  timeout 300 $E/test_gpu_all > $R/test_gpu.log 2>&1; rc=$?; echo test_gpu all rc=$rc $(el); grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu.log | head -12
  if [ $rc != 0 ]; then for x in merge tbvec; do  # which patch
    timeout 300 $E/test_gpu_$x > $R/test_gpu_$x.log 2>&1; echo test_gpu $x rc=$? $(el); grep -E "FAILED  \]" $R/test_gpu_$x.log | head -8
  done; fi
  timeout 60 $E/test_fp8_cache_all > $R/test_fp8_cache.log 2>&1; echo test_fp8_cache rc=$?; tail -n 1 $R/test_fp8_cache.log
  # The two-block 16-bit kernel's barriers and hand-offs (racecheck also flags the kPFull
  # arrive-then-sync hand-off of fin_sum / fin_max, a pattern it does not model: perf-log v15).
  for tool in synccheck racecheck; do
    timeout 150 compute-sanitizer --tool $tool $E/test_gpu_all --gtest_filter='TwoRowBlocks/*:Shapes/GpuMatrix.*/hq32_sq1_hkv1_causal' > $R/san_$tool.log 2>&1
    echo sanitizer $tool rc=$? $(el); grep -E "ERROR SUMMARY|hazard|Barrier" $R/san_$tool.log | sort | uniq -c | head -5
  done
fi
pack
for rep in $(seq $((1 + ${REP0:-0})) $((${REPS:-2} + ${REP0:-0}))); do
  for x in $VARIANTS; do
    timeout 120 $E/bench_$x --no-matrix "${C16[@]}" "${C32[@]}" "${CW[@]}" --json $R/a_${x}_r$rep.json > $R/a_${x}_r$rep.log 2>&1; echo $x rc=$? $(el)
  done
  [ "${PAGE16:-1}" = 1 ] && for x in v23 tb tbvec; do
    timeout 60 $E/bench_$x --no-matrix --page 16 "${C32[@]}" --json $R/p_${x}_r$rep.json > $R/p_${x}_r$rep.log 2>&1; echo page16 $x rc=$? $(el)
  done
done
for x in $([ "${FP8:-1}" = 1 ] && echo v23orig v23 all); do  # FP8: the epilogue (vecepi), the combine, the merge
  timeout 60 $E/bench_$x --no-matrix --fp8 "${C16[@]}" "${C32[@]}" --config 128,8192,64,1,1 --json $R/f_${x}_r1.json > $R/f_${x}_r1.log 2>&1; echo fp8 $x rc=$? $(el)
done
for f in decode_us sched_decode_us; do python3 $E/ab_table.py $R a $f mean; done | tee $R/ab_table.txt
python3 $E/ab_table.py $R p decode_us mean | tee -a $R/ab_table.txt
python3 $E/ab_table.py $R f decode_us mean | tee -a $R/ab_table.txt
pack
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
if [ "${TESTS:-1}" = 1 ]; then
FLASHMLA_PREBUILT_CORE=$E/libflashmla_all.a python3 setup.py build_ext --inplace > $R/binding_build.log 2>&1; echo binding rc=$? $(el)
timeout 250 python3 -m pytest tests/python -rs -q -x > $R/pytest.log 2>&1; echo pytest rc=$? $(el); tail -n 3 $R/pytest.log
timeout 120 python3 tests/test_flash_mla.py --json $R/matrix.json > $R/matrix.log 2>&1; echo matrix rc=$? $(el); tail -n 1 $R/matrix.log
fi
pack
for x in $([ "${NCU:-1}" = 1 ] && echo ${NCUV:-v23 comb quarter quarter4 merge}); do for c in "--config 128,8192,128,1,1" "--regime b256_short" "--regime skew_b64"; do
  echo "== $x $c"
  timeout 60 ncu --clock-control none --section SpeedOfLight -k regex:combine --launch-skip 4 --launch-count 2 \
    $E/bench_$x --no-matrix --iters 3 $c 2>&1 | grep -E "combine_|Duration" | sed -E 's/\(MlaDecodeParams.*//'
done; done | tee $R/ncu.txt
echo "== done $(el)"
pack; rm -rf $R
