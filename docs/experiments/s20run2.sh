#!/usr/bin/env bash
# Session 20, call 2: how long the combine takes next to the decode at 64+ rows (ncu durations
# of each kernel, serialized by the profiler), v23 (build/exp20/bench_v23).
E=build/exp20
R=$OUT/r; mkdir -p $R
src() { sed -n "s/^$1=//p" docs/experiments/s19run.sh; }
L64=$(src L_8192_64_1); L128=$(src L_8192_128_2)
which nsys ncu | tee $R/which.txt
prof() {  # name, bench args...
  local n=$1; shift
  timeout 100 ncu --clock-control none --section SpeedOfLight -k regex:"mla_decode|combine_kernel" \
    --launch-skip 8 --launch-count 4 $E/bench_v23 --no-matrix --iters 3 "$@" > $R/ncu_$n.txt 2>&1
  echo "== $n rc=$?"; grep -E "^\s+(void|.*combine_kernel|.*mla_decode)|Duration|SM Frequency" $R/ncu_$n.txt | sed -E 's/\(MlaDecodeParams.*//' | head -16
}
prof h128_s8k --config 128,8192,128,1,1
prof h128_sq2_var --config 128,$L128,128,2,1
prof h64_var --config 128,$L64,64,1,1
prof b256_short --regime b256_short
prof skew --regime skew_b64
cd $OUT && tar czf s20run2.tgz r
