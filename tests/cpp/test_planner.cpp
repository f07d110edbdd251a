// Host twin of the split-KV planner (scheduler/plan.h) against the contract the decode and
// combine kernels rely on, on many random batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "scheduler/plan.h"

namespace {

using flashmla::kSplitOverheadBlocks;
using flashmla::num_kv_blocks;

struct Plan {
  std::vector<int32_t> meta;
  std::vector<int32_t> splits;
};

Plan run_plan(const std::vector<int32_t>& seqlens, int parts) {
  Plan p;
  // Poison so that a field the planner forgets to write shows up as garbage.
  p.meta.assign(static_cast<size_t>(parts) * 8, -12345);
  p.splits.assign(seqlens.size() + 1, -12345);
  flashmla::plan_schedule(seqlens.data(), static_cast<int>(seqlens.size()), parts, p.meta.data(),
                          p.splits.data());
  return p;
}

struct Piece {
  int part, begin, end, index;
};

std::string describe(const std::vector<int32_t>& seqlens, int parts) {
  std::ostringstream s;
  s << "batch=" << seqlens.size() << " parts=" << parts << " seqlens=[";
  for (size_t i = 0; i < seqlens.size() && i < 64; ++i) s << (i ? "," : "") << seqlens[i];
  if (seqlens.size() > 64) s << ",...";
  s << "]";
  return s.str();
}

// Checks every property of the plan; returns on the first failure (gtest records it).
void check_plan(const std::vector<int32_t>& seqlens, int parts) {
  SCOPED_TRACE(describe(seqlens, parts));
  const int b = static_cast<int>(seqlens.size());
  const Plan plan = run_plan(seqlens, parts);

  int64_t total = 0;
  for (int32_t L : seqlens) {
    const int n = num_kv_blocks(std::max(L, 0));
    if (n > 0) total += n + kSplitOverheadBlocks;
  }

  std::vector<std::vector<Piece>> pieces(b);
  for (int p = 0; p < parts; ++p) {
    SCOPED_TRACE("part " + std::to_string(p));
    const int32_t* row = &plan.meta[static_cast<size_t>(p) * 8];
    const int bb = row[flashmla::kMetaBeginBatch], bk = row[flashmla::kMetaBeginBlock];
    const int eb = row[flashmla::kMetaEndBatch], ek = row[flashmla::kMetaEndBlock];
    const int bs = row[flashmla::kMetaBeginSplit];

    ASSERT_GE(bb, 0);
    ASSERT_LE(bb, eb);
    ASSERT_LE(eb, b);
    ASSERT_GE(bs, 0);
    if (bb == b) {
      ASSERT_EQ(bk, 0);
    }
    if (bb < b) {
      ASSERT_GE(bk, 0);
      ASSERT_LE(bk, num_kv_blocks(seqlens[bb]));
    }
    if (eb == b) {
      ASSERT_EQ(ek, 0) << "end_batch == batch must come with end_block == 0";
    }
    if (eb < b) {
      ASSERT_GE(ek, 0);
      ASSERT_LE(ek, num_kv_blocks(seqlens[eb]));
    }
    if (bb == eb) {
      ASSERT_LE(bk, ek);
    }
    if (bk == 0 && bb < b) {
      ASSERT_EQ(bs, 0) << "a part starting at block 0 starts a new sequence";
    }

    int64_t cost = 0;
    for (int i = bb; i <= eb && i < b; ++i) {
      const int n = num_kv_blocks(seqlens[i]);
      const int lo = i == bb ? bk : 0;
      const int hi = i == eb ? ek : n;
      ASSERT_LE(lo, hi) << "batch " << i;
      if (lo == hi) continue;
      pieces[i].push_back({p, lo, hi, i == bb ? bs : 0});
      cost += (hi - lo) + kSplitOverheadBlocks;
    }
    // cost <= total / parts + 2 * overhead + 1, in exact integer arithmetic.
    ASSERT_LE(cost * parts, total + (2 * kSplitOverheadBlocks + 1) * static_cast<int64_t>(parts))
        << "cost " << cost << " total " << total;
  }

  ASSERT_EQ(plan.splits[0], 0);
  for (int i = 0; i < b; ++i) {
    SCOPED_TRACE("batch " + std::to_string(i));
    const int n = num_kv_blocks(seqlens[i]);
    const auto& ps = pieces[i];
    ASSERT_EQ(plan.splits[i + 1] - plan.splits[i], static_cast<int>(ps.size()))
        << "num_splits must count this sequence's pieces";
    if (n == 0) continue;
    ASSERT_FALSE(ps.empty());
    int next = 0;
    for (size_t j = 0; j < ps.size(); ++j) {
      ASSERT_EQ(ps[j].begin, next) << "blocks covered out of order or twice / skipped";
      ASSERT_EQ(ps[j].index, static_cast<int>(j)) << "piece index (begin_split) mismatch";
      if (j > 0) {
        ASSERT_GT(ps[j].part, ps[j - 1].part);
      }
      next = ps[j].end;
    }
    ASSERT_EQ(next, n) << "sequence not fully covered";
  }
  // o_accum / lse_accum hold batch + parts slots.
  ASSERT_LE(plan.splits[b], b + parts);
}

std::vector<int32_t> random_seqlens(std::mt19937& rng, int b, int kind) {
  std::uniform_int_distribution<int> any(1, 20000), small(0, 200), pick(0, 9);
  std::vector<int32_t> s(b);
  switch (kind) {
    case 0:  // uniform lengths
      for (auto& L : s) L = any(rng);
      break;
    case 1:  // a fraction of empty sequences
      for (auto& L : s) L = pick(rng) < 3 ? 0 : any(rng);
      break;
    case 2:  // all empty
      std::fill(s.begin(), s.end(), 0);
      break;
    case 3:  // one huge sequence among many tiny (and empty) ones
      for (auto& L : s) L = small(rng);
      s[std::uniform_int_distribution<int>(0, b - 1)(rng)] = 1 << 20;
      break;
    case 4:  // exact page multiples and off-by-one lengths
      for (auto& L : s) L = 64 * std::uniform_int_distribution<int>(0, 100)(rng) + pick(rng) % 3 - 1;
      for (auto& L : s) L = std::max(L, 0);
      break;
    default:  // short sequences only: overhead dominates
      for (auto& L : s) L = small(rng);
      break;
  }
  return s;
}

TEST(Planner, FixedEdgeCases) {
  for (int parts : {1, 2, 3, 7, 64, 78, 132, 264}) {
    check_plan({0}, parts);
    check_plan({1}, parts);
    check_plan({64}, parts);
    check_plan({65}, parts);
    check_plan({1 << 20}, parts);
    check_plan({0, 0, 0, 0}, parts);
    check_plan({0, 5000, 0}, parts);
    check_plan({8192, 8192, 8192, 8192}, parts);
    check_plan(std::vector<int32_t>(1024, 1), parts);
    check_plan(std::vector<int32_t>(1024, 16384), parts);
  }
}

TEST(Planner, RandomBatches) {
  std::mt19937 rng(20240607);
  std::uniform_int_distribution<int> kind(0, 5), parts_dist(1, 264);
  for (int trial = 0; trial < 3000; ++trial) {
    // Batch sizes skewed towards small ones, but reaching 1024.
    const int b = trial % 4 == 0 ? std::uniform_int_distribution<int>(1, 1024)(rng)
                                 : std::uniform_int_distribution<int>(1, 64)(rng);
    const std::vector<int32_t> seqlens = random_seqlens(rng, b, kind(rng));
    check_plan(seqlens, parts_dist(rng));
    if (HasFatalFailure()) return;
  }
}

TEST(Planner, EveryPartCountForOneBatch) {
  std::mt19937 rng(7);
  const std::vector<int32_t> seqlens = random_seqlens(rng, 37, 1);
  for (int parts = 1; parts <= 264; ++parts) {
    check_plan(seqlens, parts);
    if (HasFatalFailure()) return;
  }
}

TEST(Planner, Deterministic) {
  std::mt19937 rng(11);
  const std::vector<int32_t> seqlens = random_seqlens(rng, 300, 1);
  const Plan a = run_plan(seqlens, 132), b = run_plan(seqlens, 132);
  EXPECT_EQ(a.meta, b.meta);
  EXPECT_EQ(a.splits, b.splits);
}

}  // namespace
