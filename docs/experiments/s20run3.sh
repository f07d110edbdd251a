#!/usr/bin/env bash
# Session 20, call 3 (build: docs/experiments/s20build3.sh; carry build/exp21): the
# warp-per-row combine. Tests (C++ GPU, binding + pytest, matrix), A/B against v23 (BF16 wide
# and 16-row configs, $REPS (2) interleaved repeats; FP8 16-row, one, unless FP8=0), ncu
# durations of the combine.
set -o pipefail
export PYTHONUNBUFFERED=1
E=build/exp21
R=$OUT/r; mkdir -p $R
t0=$(date +%s)
el() { echo "t=$(( $(date +%s)-t0 ))"; }
pack() { (cd $OUT && tar czf s20run3.tgz r); }
src() { sed -n "s/^$1=//p" docs/experiments/s19run.sh; }
L16=$(src L_4096_16_1); L64a=$(src L_4096_64_1); L64=$(src L_8192_64_1); L128=$(src L_8192_128_2)
C16=(--config 128,8192,16,1,1 --config 128,$L16,16,1,1 --config 4,8192,16,1,1 --config 32,8192,16,1,1 --regime b1_8k_h16 --regime b1_128k_h16)
CW=(--config 128,$L64a,64,1,1 --config 128,$L64,64,1,1 --config 128,$L128,128,2,1 --config 128,8192,128,1,0 --config 128,16384,128,2,1 --regime b1_64k_h128 --regime skew_b64 --regime quarter_empty_b16 --regime b256_short --regime mtp4_b32)
timeout 150 $E/test_gpu_comb > $R/test_gpu.log 2>&1; echo test_gpu rc=$? $(el); grep -E "^\[  (PASSED|FAILED) |FAILED  \]" $R/test_gpu.log | head -8
pack
for rep in $(seq 1 ${REPS:-2}); do
  for x in v23 comb; do
    timeout 90 $E/bench_$x --no-matrix "${C16[@]}" "${CW[@]}" --json $R/a_${x}_r$rep.json > $R/a_${x}_r$rep.log 2>&1; echo $x rc=$? $(el)
  done
done
for x in $([ "${FP8:-1}" = 1 ] && echo v23 comb); do
  timeout 60 $E/bench_$x --no-matrix --fp8 "${C16[@]}" --config 128,8192,64,1,1 --json $R/f_${x}_r1.json > $R/f_${x}_r1.log 2>&1; echo fp8 $x rc=$? $(el)
done
for f in decode_us sched_decode_us; do python3 $E/ab_table.py $R a $f mean; done | tee $R/ab_table.txt
python3 $E/ab_table.py $R f decode_us mean | tee -a $R/ab_table.txt
pack
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
FLASHMLA_PREBUILT_CORE=$E/libflashmla_comb.a python3 setup.py build_ext --inplace > $R/binding_build.log 2>&1; echo binding rc=$? $(el)
timeout 150 python3 -m pytest tests/python -rs -q -x > $R/pytest.log 2>&1; echo pytest rc=$?; tail -n 3 $R/pytest.log
timeout 100 python3 tests/test_flash_mla.py --json $R/matrix.json > $R/matrix.log 2>&1; echo matrix rc=$?; tail -n 1 $R/matrix.log
pack
for c in "--config 128,8192,128,1,1" "--regime b256_short"; do
  timeout 60 ncu --clock-control none --section SpeedOfLight -k regex:combine --launch-skip 4 --launch-count 2 \
    $E/bench_comb --no-matrix --iters 3 $c 2>&1 | grep -E "combine_|Duration" | sed -E 's/\(MlaDecodeParams.*//'
done | tee $R/ncu.txt
echo "== done $(el)"
pack; rm -rf $R
