#!/usr/bin/env bash
# usage: mkvar2.sh NAME "patch1 patch2..." [sed-script] [targets...]; from HEAD; copies bench_decode (+ test_gpu, lib if asked)
set -e
N=$1; P=$2; S=$3; shift 3
cd /work/main
rm -rf /tmp/v_$N; git worktree prune
git worktree add -f -q /tmp/v_$N HEAD
cd /tmp/v_$N
for x in $P; do patch -p1 --fuzz=3 -s < $x; done
rm -f $(git ls-files --others --exclude-standard | grep '\.orig$') 
if [ -n "$S" ]; then bash $S; fi
cmake -S . -B b -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMLA_BUILD_TESTS=ON -DFLASHMLA_BUILD_BENCHMARKS=ON > /dev/null
cmake --build b --target bench_decode "$@" > /tmp/v_$N.log 2>&1 || { tail -30 /tmp/v_$N.log; exit 1; }
grep -c C75 /tmp/v_$N.log | sed "s/^/C75 count: /"
cp b/bench_decode /work/main/build/exp/bench_$N
for t in "$@"; do
  case $t in
    test_gpu) cp b/test_gpu /work/main/build/exp/test_gpu_$N ;;
    flashmla) cp b/libflashmla.a /work/main/build/exp/libflashmla_$N.a ;;
  esac
done
cd /work/main && git worktree remove --force /tmp/v_$N
echo built $N
