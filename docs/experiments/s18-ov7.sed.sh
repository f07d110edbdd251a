sed -i 's/constexpr int kSplitOverheadBlocks = 5;/constexpr int kSplitOverheadBlocks = 7;/' src/scheduler/plan.h && grep -q 'kSplitOverheadBlocks = 7;' src/scheduler/plan.h
