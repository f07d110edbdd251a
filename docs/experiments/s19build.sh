#!/usr/bin/env bash
# Session 19's pending experiments, built on the CPU machine into build/exp19 (~40 MB; carry it
# whole to the GPU and run docs/experiments/s19run.sh there). Each binary is HEAD plus patches:
#   v22       b254d44, session 18's landed tree (before the launch helper)
#   head      HEAD (v22 kernels and plan; the launch helper of src/launch.h, the ring refactor)
#   all       + ov2small qprefetch startpf combpre (the candidate: its tests run too)
#   no_<x>    all but patch x (what x adds to the candidate)
#   ov3, ov4  all + the wide kernel's plan overhead 3 / 4
#   combpre4  all + the combine's preload at 4 chunks too (s19-combpre4.sh)
# Patches (docs/experiments/): s19-ov2small (plan overhead 2 up to 16 rows), s19-qprefetch (the
# wide kernel's next Q under the last pair), s19-startpf (first page id prefetched at entry; the
# small kernel's first Q before the length), s19-combpre (16-chunk combine loads its partials
# before the LSE reductions).
set -e
cd /work/main
X=$PWD/docs/experiments
export EXP_DIR=build/exp19
rm -rf $EXP_DIR
ALL="ov2small qprefetch startpf combpre"
paths() { for x in "$@"; do echo -n "$X/s19-$x.patch "; done; }
REV=b254d44 bash $X/build_variant.sh v22 "" "" | tail -1
bash $X/build_variant.sh head "" "" | tail -1
bash $X/build_variant.sh all "$(paths $ALL)" "" test_gpu test_fp8_cache flashmla | tail -2
for x in $ALL; do
  bash $X/build_variant.sh no_$x "$(paths $(echo $ALL | tr ' ' '\n' | grep -vx $x))" "" | tail -1
done
for ov in 3 4; do OV=$ov bash $X/build_variant.sh ov$ov "$(paths $ALL)" $X/s19-wideov.sh | tail -1; done
bash $X/build_variant.sh combpre4 "$(paths $ALL)" $X/s19-combpre4.sh | tail -1
cp $X/ab_table.py $EXP_DIR/
du -sh $EXP_DIR
