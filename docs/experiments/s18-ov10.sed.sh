sed -i 's/constexpr int kSplitOverheadBlocks = 5;/constexpr int kSplitOverheadBlocks = 10;/' src/scheduler/plan.h && grep -q 'kSplitOverheadBlocks = 10;' src/scheduler/plan.h
