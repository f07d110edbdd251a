#!/usr/bin/env bash
# Session 20, call 3: the warp-per-row combine (HEAD) against v23 (build/exp20's bench_v23).
set -e
cd /work/main
X=$PWD/docs/experiments
export EXP_DIR=build/exp21
rm -rf $EXP_DIR
bash $X/build_variant.sh comb "" "" test_gpu flashmla | tail -2
cp build/exp20/bench_v23 $EXP_DIR/
cp $X/ab_table.py $EXP_DIR/
du -sh $EXP_DIR
