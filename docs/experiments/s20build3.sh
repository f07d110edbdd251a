#!/usr/bin/env bash
# Session 20, call 3 (not run: no device lent after call 2): the warp-per-row combine
# (HEAD + s20-combrows.patch) against HEAD (v23). Then on the GPU: docs/experiments/s20run3.sh
# with carry build/exp21.
set -e
cd /work/main
X=$PWD/docs/experiments
export EXP_DIR=build/exp21
rm -rf $EXP_DIR
bash $X/build_variant.sh comb "$X/s20-combrows.patch" "" test_gpu flashmla | tail -2
bash $X/build_variant.sh v23 "" "" | tail -1
cp $X/ab_table.py $EXP_DIR/
du -sh $EXP_DIR
