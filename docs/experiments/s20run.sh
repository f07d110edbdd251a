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
src() { sed -n "s/^$1=//p" docs/experiments/s19run.sh; }  # the length lists of session 19's A/B
L_4096_16_1=$(src L_4096_16_1); L_4096_64_1=$(src L_4096_64_1)
L_8192_64_1=$(src L_8192_64_1); L_8192_128_2=$(src L_8192_128_2)
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
