#!/usr/bin/env bash
# usage: build_variant.sh NAME "patch1 patch2..." [sed-script] [targets...]: HEAD plus the patches
# (absolute paths) and the sed script, built in a worktree; copies bench_decode (and test_gpu,
# test_fp8_cache, libflashmla.a if named as targets) to $EXP_DIR (default build/exp) as
# bench_NAME, test_gpu_NAME, test_fp8_cache_NAME, libflashmla_NAME.a. $REV: another base commit;
# $NVCC: another CUDA compiler (e.g. a toolkit copy whose ptxas is another version).
set -e
N=$1; P=$2; S=$3; shift 3
cd /work/main
rm -rf /tmp/v_$N; git worktree prune
git worktree add -f -q /tmp/v_$N ${REV:-HEAD}
cd /tmp/v_$N
for x in $P; do patch -p1 --fuzz=3 -s < $x; done
rm -f $(git ls-files --others --exclude-standard | grep '\.orig$') 
if [ -n "$S" ]; then bash $S; fi
cmake -S . -B b -G Ninja -DCMAKE_BUILD_TYPE=Release ${NVCC:+-DCMAKE_CUDA_COMPILER=$NVCC} -DFLASHMLA_BUILD_TESTS=ON -DFLASHMLA_BUILD_BENCHMARKS=ON > /dev/null
cmake --build b --target bench_decode "$@" > /tmp/v_$N.log 2>&1 || { tail -30 /tmp/v_$N.log; exit 1; }
grep -c C75 /tmp/v_$N.log | sed "s/^/C75 count: /"
E=/work/main/${EXP_DIR:-build/exp}; mkdir -p $E
cp b/bench_decode $E/bench_$N
for t in "$@"; do
  case $t in
    test_gpu) cp b/test_gpu $E/test_gpu_$N ;;
    test_fp8_cache) cp b/test_fp8_cache $E/test_fp8_cache_$N ;;
    flashmla) cp b/libflashmla.a $E/libflashmla_$N.a ;;
  esac
done
cd /work/main && git worktree remove --force /tmp/v_$N
echo built $N
