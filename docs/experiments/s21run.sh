#!/usr/bin/env bash
# Session 21's combine and merge variants (build: docs/experiments/s21build.sh; carry
# build/exp22). Tests of $T (merge; C++ GPU, binding + pytest, matrix; TESTS=0 skips them),
# A/B of $VARIANTS (BF16 wide and 16-row configs, $REPS (2) interleaved repeats; FP8 v23/$T,
# one repeat, unless FP8=0), ncu durations of the combine
# of $NCUV (v23 quarter merge; NCU=0 skips). First call: TESTS=1 REPS=1 NCU=0
# VARIANTS='v23 quarter merge' (~5 min); second: TESTS=0 FP8=0 NCU=0 (the eight variants, ~5 min);
# third: TESTS=0 FP8=0 REPS=0 (ncu only).
set -o pipefail
VARIANTS=${VARIANTS:-v23 comb quarter quarter4 merge merge4r merge2 merge8}
T=${T:-merge}
export PYTHONUNBUFFERED=1
E=build/exp22
R=$OUT/r; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
pack() { (cd $OUT && tar czf s21run.tgz r); }
src() { sed -n "s/^$1=//p" docs/experiments/s19run.sh; }
L16=$(src L_4096_16_1); L64a=$(src L_4096_64_1); L64=$(src L_8192_64_1); L128=$(src L_8192_128_2)
C16=(--config 128,8192,16,1,1 --config 128,$L16,16,1,1 --config 4,8192,16,1,1 --config 32,8192,16,1,1 --regime b1_8k_h16 --regime b1_128k_h16)
CW=(--config 128,$L64a,64,1,1 --config 128,$L64,64,1,1 --config 128,$L128,128,2,1 --config 128,8192,128,1,0 --config 128,16384,128,2,1 --regime b1_64k_h128 --regime skew_b64 --regime quarter_empty_b16 --regime b256_short --regime mtp4_b32)
if [ "${TESTS:-1}" = 1 ]; then timeout 200 $E/test_gpu_$T > $R/test_gpu.log 2>&1; echo test_gpu $T rc=$? $(el); grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu.log | head -8; fi
pack
for rep in $(seq 1 ${REPS:-2}); do
  for x in $VARIANTS; do
    timeout 90 $E/bench_$x --no-matrix "${C16[@]}" "${CW[@]}" --json $R/a_${x}_r$rep.json > $R/a_${x}_r$rep.log 2>&1; echo $x rc=$? $(el)
  done
done
for x in $([ "${FP8:-1}" = 1 ] && echo v23 $T); do
  timeout 60 $E/bench_$x --no-matrix --fp8 "${C16[@]}" --config 128,8192,64,1,1 --json $R/f_${x}_r1.json > $R/f_${x}_r1.log 2>&1; echo fp8 $x rc=$? $(el)
done
for f in decode_us sched_decode_us; do python3 $E/ab_table.py $R a $f mean; done | tee $R/ab_table.txt
python3 $E/ab_table.py $R f decode_us mean | tee -a $R/ab_table.txt
pack
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
if [ "${TESTS:-1}" = 1 ]; then
FLASHMLA_PREBUILT_CORE=$E/libflashmla_$T.a python3 setup.py build_ext --inplace > $R/binding_build.log 2>&1; echo binding rc=$? $(el)
timeout 150 python3 -m pytest tests/python -rs -q -x > $R/pytest.log 2>&1; echo pytest rc=$?; tail -n 3 $R/pytest.log
timeout 100 python3 tests/test_flash_mla.py --json $R/matrix.json > $R/matrix.log 2>&1; echo matrix rc=$?; tail -n 1 $R/matrix.log
fi
pack
for x in $([ "${NCU:-1}" = 1 ] && echo ${NCUV:-v23 comb quarter quarter4 merge}); do for c in "--config 128,8192,128,1,1" "--regime b256_short" "--regime skew_b64"; do
  echo "== $x $c"
  timeout 60 ncu --clock-control none --section SpeedOfLight -k regex:combine --launch-skip 4 --launch-count 2 \
    $E/bench_$x --no-matrix --iters 3 $c 2>&1 | grep -E "combine_|Duration" | sed -E 's/\(MlaDecodeParams.*//'
done; done | tee $R/ncu.txt
echo "== done $(el)"
pack; rm -rf $R
