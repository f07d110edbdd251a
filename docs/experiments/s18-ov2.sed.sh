sed -i 's/constexpr int kSplitOverheadBlocks = 5;/constexpr int kSplitOverheadBlocks = 2;/' src/scheduler/plan.h && grep -q 'kSplitOverheadBlocks = 2;' src/scheduler/plan.h
