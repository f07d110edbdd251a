#!/usr/bin/env bash
# Session 21 (no device lent): the combine variants, built for GPU calls of
# docs/experiments/s21run.sh (carry build/exp22):
#   v23     HEAD (one CTA of 128 threads per row in the combine at batch >= 17)
#   comb    s20-combrows.patch (a warp per row)
#   quarter s21-combquarter.patch (a warp per row and quarter of the columns, 16 partials in
#           flight per warp)
#   merge   quarter + s21-merge.patch (the wide decode kernel's last piece of a sequence
#           merges 2..4 pieces itself; the combine skips them), and merge2 / merge8 (2 / 8)
#   quarter4, merge4r: quarter / merge with 4 rows per warp (4x fewer combine CTAs: at b=128
#           h_q=128 16k CTAs that mostly only read num_splits and leave)
# quarter and merge with test_gpu and the core library (binding + pytest).
set -e -o pipefail
cd /work/main
X=$PWD/docs/experiments
export EXP_DIR=build/exp22
rm -rf $EXP_DIR
mm() { echo "sed -i 's/constexpr int kMergeMaxSplits = 4;/constexpr int kMergeMaxSplits = $1;/' src/sm90/decode_config.h" > /tmp/s21_mm$1.sh; echo /tmp/s21_mm$1.sh; }
bash $X/build_variant.sh merge "$X/s21-combquarter.patch $X/s21-merge.patch" "" test_gpu flashmla | tail -2
bash $X/build_variant.sh quarter "$X/s21-combquarter.patch" "" test_gpu flashmla | tail -1
bash $X/build_variant.sh merge2 "$X/s21-combquarter.patch $X/s21-merge.patch" "$(mm 2)" | tail -1
bash $X/build_variant.sh merge8 "$X/s21-combquarter.patch $X/s21-merge.patch" "$(mm 8)" | tail -1
rpw() { echo "sed -i 's/constexpr int kRowsPerWarp = 1;/constexpr int kRowsPerWarp = 4;/' src/combine.cu" > /tmp/s21_rpw.sh; echo /tmp/s21_rpw.sh; }
bash $X/build_variant.sh quarter4 "$X/s21-combquarter.patch" "$(rpw)" | tail -1
bash $X/build_variant.sh merge4r "$X/s21-combquarter.patch $X/s21-merge.patch" "$(rpw)" | tail -1
bash $X/build_variant.sh comb "$X/s20-combrows.patch" "" | tail -1
bash $X/build_variant.sh v23 "" "" | tail -1
cp $X/ab_table.py $EXP_DIR/
du -sh $EXP_DIR
