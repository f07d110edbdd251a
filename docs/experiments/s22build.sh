#!/usr/bin/env bash
# Session 22 (no device lent): session 21's variants (copied from build/exp22, built by
# s21build.sh) plus the 16-bit two-row-block small kernel, into build/exp23 for
# docs/experiments/s22run.sh (carry build/exp23, ~50 MB):
#   tb      s22-twoblock16.patch (17-32 rows per kv head on 16-bit pages >= 16: the small-head
#           kernel's two row blocks instead of the wide kernel's padded 64-row tile)
#   v23orig session 21's HEAD (8680976), against which v23 (HEAD: the PDL trigger after the
#           wait, the walks' clamped starts, the host checks) is measured
#   tbov2   tb with the plan's piece overhead 2 (the small kernel's) up to 32 rows instead of 16
#   tbvec   tb + s22-vecepi.patch (the 16-bit small kernel's epilogue as 16-byte row stores
#           through a stmatrix transpose), with test_gpu
#   all     quarter + merge + tb + vecepi, with test_gpu, test_fp8_cache and the core library
#           (its tests cover the four patches at once; test_gpu_merge and test_gpu_tbvec tell
#           which failed)
# merge2 / merge8 of build/exp22 stay there (the carry holds 64 MiB).
set -e -o pipefail
cd /work/main
X=$PWD/docs/experiments
[ -x build/exp22/bench_merge ] || bash $X/s21build.sh
export EXP_DIR=build/exp23
rm -rf $EXP_DIR; mkdir -p $EXP_DIR
for x in v23 comb quarter quarter4 merge merge4r; do cp build/exp22/bench_$x $EXP_DIR/; done
cp build/exp22/ab_table.py build/exp22/test_gpu_merge $EXP_DIR/
echo "sed -i 's/return rows_per_kv_head <= 16 ? kSmallSplitOverheadBlocks/return rows_per_kv_head <= 32 ? kSmallSplitOverheadBlocks/' src/scheduler/plan.h" > /tmp/s22_ov2.sh
REV=8680976 bash $X/build_variant.sh v23orig "" "" | tail -1  # session 21's HEAD: v23 before today's fixes
bash $X/build_variant.sh tb "$X/s22-twoblock16.patch" "" | tail -1
bash $X/build_variant.sh tbvec "$X/s22-twoblock16.patch $X/s22-vecepi.patch" "" test_gpu | tail -1
bash $X/build_variant.sh tbov2 "$X/s22-twoblock16.patch" /tmp/s22_ov2.sh | tail -1
grep -q "rows_per_kv_head <= 16 ? kSmallSplitOverheadBlocks" src/scheduler/plan.h || { echo "ov2 sed no longer matches plan.h"; exit 1; }
bash $X/build_variant.sh all "$X/s21-combquarter.patch $X/s21-merge.patch $X/s22-twoblock16.patch $X/s22-vecepi.patch" "" test_gpu test_fp8_cache flashmla | tail -1
du -sh $EXP_DIR
