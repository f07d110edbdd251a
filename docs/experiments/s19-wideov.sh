# sed script for build_variant.sh: the wide kernel's plan overhead per piece = $OV (HEAD: 5).
set -e
sed -i "s/^constexpr int kSplitOverheadBlocks = 5; /constexpr int kSplitOverheadBlocks = ${OV:?}; /" src/scheduler/plan.h
grep -q "kSplitOverheadBlocks = ${OV};" src/scheduler/plan.h
