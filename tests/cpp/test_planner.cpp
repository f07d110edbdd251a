// Host twin of the split-KV planner (scheduler/plan.h) against the contract the decode and
// combine kernels rely on, on many random batches; brute-force checks of the closed-form
// helpers; and a host emulation of the GPU kernel's chunked phases (src/metadata.cu) against
// the host twin, for several thread counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "scheduler/plan.h"

namespace {

using flashmla::kSplitOverheadBlocks;
using flashmla::num_kv_blocks;
namespace plan = flashmla::plan;

constexpr int kOv = kSplitOverheadBlocks;  // the default of the helpers below

struct Plan {
  std::vector<int32_t> meta;
  std::vector<int32_t> splits;
};

Plan run_plan(const std::vector<int32_t>& seqlens, int parts, int ov = kOv) {
  Plan p;
  // Poison so that a field the planner forgets to write shows up as garbage.
  p.meta.assign(static_cast<size_t>(parts) * 8, -12345);
  p.splits.assign(seqlens.size() + 1, -12345);
  flashmla::plan_schedule(seqlens.data(), static_cast<int>(seqlens.size()), parts, ov,
                          p.meta.data(), p.splits.data());
  return p;
}

// The GPU kernel's phases (src/metadata.cu) run one "thread" at a time, with sequential scans
// standing in for the block scans: same helpers, same chunking, same binary search.
Plan emulate_kernel(const std::vector<int32_t>& seqlens, int parts, int threads, int ov) {
  Plan out;
  out.meta.assign(static_cast<size_t>(parts) * 8, -12345);
  out.splits.assign(seqlens.size() + 1, -12345);
  const int batch = static_cast<int>(seqlens.size());
  const int32_t* s = seqlens.data();
  const int chunk = plan::chunk_size(batch, threads);
  auto lo = [&](int t) { return plan::chunk_begin(t, chunk, batch); };
  std::vector<int64_t> start(threads), first_split(threads);
  int64_t total = 0, max_cost = 0;
  for (int t = 0; t < threads; ++t) {
    start[t] = total;
    total += plan::range_cost(s, lo(t), lo(t + 1), ov);
    max_cost = std::max(max_cost, plan::range_max_cost(s, lo(t), lo(t + 1), ov));
  }
  const bool whole = plan::whole_sequences(max_cost, total, batch, parts);
  const int64_t pay = whole ? plan::kWholePayload : plan::payload(total, parts);
  int64_t pieces = 0;
  for (int t = 0; t < threads; ++t) {
    first_split[t] = pieces;
    pieces += plan::range_pieces(s, lo(t), lo(t + 1), start[t], pay, ov);
  }
  out.splits[0] = 0;
  for (int t = 0; t < threads; ++t) {
    plan::write_range_splits(s, lo(t), lo(t + 1), start[t], pay, ov, first_split[t], out.splits.data());
  }
  for (int t = 0; t < threads; ++t) {
    for (int p = t; p <= parts; p += threads) {
      const plan::Boundary b =
          whole ? plan::whole_boundary(p, batch)
                : plan::locate_boundary(p, pay, ov, total, s, batch, start.data(), threads, chunk);
      plan::write_boundary(out.meta.data(), parts, p, b);
    }
  }
  return out;
}

struct Piece {
  int part, begin, end, index;
};

std::string describe(const std::vector<int32_t>& seqlens, int parts, int ov) {
  std::ostringstream s;
  s << "batch=" << seqlens.size() << " parts=" << parts << " ov=" << ov << " seqlens=[";
  for (size_t i = 0; i < seqlens.size() && i < 64; ++i) s << (i ? "," : "") << seqlens[i];
  if (seqlens.size() > 64) s << ",...";
  s << "]";
  return s.str();
}

// ceil(max(L, 0) / 64), computed without overflowing near INT32_MAX.
int blocks_of(int32_t L) { return L > 0 ? static_cast<int>((int64_t{L} + 63) / 64) : 0; }

// Checks every property of the plan; returns on the first failure (gtest records it).
// emulate: also compare the GPU kernel emulation for these thread counts.
// ov: the plan's overhead per piece (plan::split_overhead_blocks).
void check_plan(const std::vector<int32_t>& seqlens, int parts,
                std::initializer_list<int> emulate = {1, 3, 32, 512}, int ov = kOv) {
  SCOPED_TRACE(describe(seqlens, parts, ov));
  const int b = static_cast<int>(seqlens.size());
  const Plan plan = run_plan(seqlens, parts, ov);

  int64_t total = 0;
  std::vector<int64_t> C(b + 1, 0);  // cost position of each sequence
  for (int i = 0; i < b; ++i) {
    const int n = blocks_of(seqlens[i]);
    C[i + 1] = C[i] + (n > 0 ? n + ov : 0);
  }
  total = C[b];
  const int64_t pay = std::max<int64_t>(1, (total + parts - 1) / parts);
  int64_t max_cost = 0;
  for (int i = 0; i < b; ++i) max_cost = std::max(max_cost, C[i + 1] - C[i]);
  // Whole-sequence plan: part i is all of sequence i (scheduler/plan.h).
  const bool whole = b <= parts && max_cost <= pay + flashmla::kWholeSlackBlocks;

  std::vector<std::vector<Piece>> pieces(b);
  for (int p = 0; p < parts; ++p) {
    SCOPED_TRACE("part " + std::to_string(p));
    const int32_t* row = &plan.meta[static_cast<size_t>(p) * 8];
    const int bb = row[flashmla::kMetaBeginBatch], bk = row[flashmla::kMetaBeginBlock];
    const int eb = row[flashmla::kMetaEndBatch], ek = row[flashmla::kMetaEndBlock];
    const int bs = row[flashmla::kMetaBeginSplit];

    ASSERT_EQ(row[5], 0);
    ASSERT_EQ(row[6], 0);
    ASSERT_EQ(row[7], 0);
    ASSERT_GE(bb, 0);
    ASSERT_LE(bb, eb);
    ASSERT_LE(eb, b);
    ASSERT_GE(bs, 0);
    if (bb == b) {
      ASSERT_EQ(bk, 0);
    }
    if (bb < b) {
      ASSERT_GE(bk, 0);
      ASSERT_LE(bk, blocks_of(seqlens[bb]));
    }
    if (eb == b) {
      ASSERT_EQ(ek, 0) << "end_batch == batch must come with end_block == 0";
    }
    if (eb < b) {
      ASSERT_GE(ek, 0);
      ASSERT_LE(ek, blocks_of(seqlens[eb]));
    }
    if (bb == eb) {
      ASSERT_LE(bk, ek);
    }
    if (bk == 0 && bb < b) {
      ASSERT_EQ(bs, 0) << "a part starting at block 0 starts a new sequence";
    }
    if (whole) {
      ASSERT_EQ(bb, std::min(p, b)) << "whole-sequence plan: part p starts sequence p";
      ASSERT_EQ(bk, 0);
    }
    if (p + 1 < parts) {
      const int32_t* next = row + 8;
      ASSERT_EQ(eb, next[flashmla::kMetaBeginBatch]) << "part end != next part begin";
      ASSERT_EQ(ek, next[flashmla::kMetaBeginBlock]) << "part end != next part begin";
    } else {
      ASSERT_EQ(eb, b) << "the last part must end at (batch, 0)";
    }

    int64_t cost = 0;
    for (int i = bb; i <= eb && i < b; ++i) {
      const int n = blocks_of(seqlens[i]);
      const int lo = i == bb ? bk : 0;
      const int hi = i == eb ? ek : n;
      ASSERT_LE(lo, hi) << "batch " << i;
      if (lo == hi) continue;
      pieces[i].push_back({p, lo, hi, i == bb ? bs : 0});
      cost += (hi - lo) + ov;
      if (whole) {
        ASSERT_EQ(i, p) << "whole-sequence plan: part p holds sequence p only";
        continue;
      }
      // Closed form: block k of sequence i belongs to part (C_i + ov + k) / P (monotonic in k,
      // so the two ends suffice).
      ASSERT_EQ((C[i] + ov + lo) / pay, p) << "batch " << i << " block " << lo;
      ASSERT_EQ((C[i] + ov + hi - 1) / pay, p) << "batch " << i << " block " << hi - 1;
    }
    // The documented bounds, P = max(1, ceil(total / parts)): cost <= P + ov for the split
    // plan, cost <= P + kWholeSlackBlocks for the whole-sequence plan.
    ASSERT_LE(cost, pay + (whole ? flashmla::kWholeSlackBlocks : ov)) << "total " << total;
  }

  ASSERT_EQ(plan.splits[0], 0);
  for (int i = 0; i < b; ++i) {
    SCOPED_TRACE("batch " + std::to_string(i));
    const int n = blocks_of(seqlens[i]);
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
  // o_accum / lse_accum hold batch + parts slots (at most batch + parts - 1 are used).
  ASSERT_LE(plan.splits[b], static_cast<int64_t>(b) + parts - (b > 0 ? 1 : 0));

  for (int threads : emulate) {
    SCOPED_TRACE("GPU emulation, threads=" + std::to_string(threads));
    const Plan gpu = emulate_kernel(seqlens, parts, threads, ov);
    ASSERT_EQ(gpu.meta, plan.meta);
    ASSERT_EQ(gpu.splits, plan.splits);
  }
}

std::vector<int32_t> random_seqlens(std::mt19937& rng, int b, int kind) {
  std::uniform_int_distribution<int> any(1, 20000), small(0, 200), pick(0, 9);
  std::vector<int32_t> s(b);
  switch (kind) {
    case 0:  // uniform lengths
      for (auto& L : s) L = any(rng);
      break;
    case 1:  // a fraction of empty (and negative) sequences
      for (auto& L : s) L = pick(rng) < 3 ? -pick(rng) * 50 : any(rng);
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
    case 5:  // long runs of empty sequences (whole GPU chunks with zero cost)
      for (auto& L : s) L = pick(rng) < 9 ? 0 : any(rng);
      break;
    default:  // short sequences only: overhead dominates
      for (auto& L : s) L = small(rng);
      break;
  }
  return s;
}

// --- helpers against brute force ------------------------------------------------------

TEST(PlannerHelpers, SeqBlocksAndCost) {
  for (int32_t L : {INT32_MIN, -100000, -64, -1, 0}) {
    EXPECT_EQ(num_kv_blocks(L), 0);
    EXPECT_EQ(plan::seq_cost(L, kOv), 0);
  }
  for (int32_t L = 1; L <= 1000; ++L) {
    EXPECT_EQ(num_kv_blocks(L), (L + 63) / 64);
    for (int ov : {0, 1, 5, 9}) EXPECT_EQ(plan::seq_cost(L, ov), num_kv_blocks(L) + ov);
  }
  // The kernels use the same count: no overflow where L + 63 would pass INT32_MAX.
  for (int32_t L : {INT32_MAX - 63, INT32_MAX - 62, INT32_MAX - 1, INT32_MAX})
    EXPECT_EQ(num_kv_blocks(L), (int64_t{L} + 63) / 64);
}

TEST(PlannerHelpers, PiecesAndSplitsAgainstBruteForce) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t pay = std::uniform_int_distribution<int>(1, 40)(rng);
    const int64_t c = std::uniform_int_distribution<int>(0, 300)(rng);
    const int n = std::uniform_int_distribution<int>(0, 120)(rng);
    const int ov = std::uniform_int_distribution<int>(0, 10)(rng);
    const int64_t cost = n > 0 ? n + ov : 0;
    // Part q starts at q * pay; it cuts the sequence iff the start is inside at block > 0.
    int cuts = 0;
    for (int64_t q = 0; q * pay < c + cost; ++q) cuts += q * pay > c + ov;
    ASSERT_EQ(plan::seq_pieces(c, cost, pay, ov), n > 0 ? 1 + cuts : 0)
        << "c=" << c << " n=" << n << " pay=" << pay << " ov=" << ov;
    if (n == 0) continue;
    for (int p = 0; static_cast<int64_t>(p) * pay < c + cost; ++p) {
      const int64_t x = p * pay;
      if (x < c) continue;
      int before = 0;
      for (int q = 0; q <= p; ++q) before += q * pay > c + ov;
      const int block = plan::start_block(x, c, ov);
      ASSERT_EQ(block, x - c <= ov ? 0 : static_cast<int>(x - c - ov));
      ASSERT_LT(block, n);
      ASSERT_EQ(plan::start_split(p, x, c, pay, ov), block == 0 ? 0 : before)
          << "c=" << c << " n=" << n << " pay=" << pay << " p=" << p;
    }
  }
}

TEST(PlannerHelpers, PayloadAndChunks) {
  EXPECT_EQ(plan::payload(0, 7), 1);
  EXPECT_EQ(plan::payload(1, 7), 1);
  EXPECT_EQ(plan::payload(14, 7), 2);
  EXPECT_EQ(plan::payload(15, 7), 3);
  EXPECT_EQ(plan::payload(int64_t{1} << 40, 3), ((int64_t{1} << 40) + 2) / 3);
  for (int batch : {0, 1, 5, 511, 512, 513, 70000}) {
    for (int threads : {1, 3, 32, 512}) {
      const int chunk = plan::chunk_size(batch, threads);
      EXPECT_EQ(plan::chunk_begin(0, chunk, batch), 0);
      EXPECT_EQ(plan::chunk_begin(threads, chunk, batch), batch);
      for (int t = 0; t < threads; ++t) {
        EXPECT_LE(plan::chunk_begin(t, chunk, batch), plan::chunk_begin(t + 1, chunk, batch));
      }
    }
  }
  const int big = INT32_MAX;
  EXPECT_EQ(plan::chunk_begin(511, plan::chunk_size(big, 512), big), 511 * (big / 512 + 1));
  EXPECT_EQ(plan::chunk_begin(512, plan::chunk_size(big, 512), big), big);
}

// --- whole plans -------------------------------------------------------------------------

TEST(Planner, FixedEdgeCases) {
  for (int parts : {1, 2, 3, 5, 6, 7, 11, 64, 78, 132, 264, 1000}) {
    check_plan({}, parts);
    check_plan({0}, parts);
    check_plan({-5}, parts);
    check_plan({1}, parts);
    check_plan({64}, parts);
    check_plan({65}, parts);
    check_plan({1 << 20}, parts);
    check_plan({INT32_MAX, INT32_MAX - 62, 1}, parts);
    check_plan({0, 0, 0, 0}, parts);
    check_plan({0, 5000, 0}, parts);
    check_plan({1, 0, 1, 0, 1}, parts);
    check_plan({8192, 8192, 8192, 8192}, parts);
    check_plan(std::vector<int32_t>(1024, 1), parts);
    check_plan(std::vector<int32_t>(1024, 16384), parts);
    check_plan(std::vector<int32_t>(1024, 0), parts);
  }
}

// The whole-sequence plan exactly where its rule says: at most as many sequences as parts and
// the costliest within P + ov; the split plan otherwise (b = 128 as in the benchmark matrix).
TEST(Planner, WholeSequencesWhenBalanced) {
  auto splits_of = [](const std::vector<int32_t>& seqlens, int parts) {
    return run_plan(seqlens, parts).splits.back();
  };
  // s_k = 4096: cost 69, P = ceil(128 * 69 / 132) = 67, 69 <= 72: one piece per sequence.
  EXPECT_EQ(splits_of(std::vector<int32_t>(128, 4096), 132), 128);
  EXPECT_EQ(splits_of(std::vector<int32_t>(128, 8192), 132), 128);  // 133 <= 129 + 5
  // s_k = 16384: cost 261 > 254 + 5: split.
  EXPECT_GT(splits_of(std::vector<int32_t>(128, 16384), 132), 128);
  // The rule's slack is what a cut costs, not the piece overhead: with ov = 2 (the small-head
  // kernel's measured figure), s_k = 8192 (cost 130 against P = 127) stays whole, s_k = 16384
  // (258 > 251 + 5) not.
  EXPECT_EQ(run_plan(std::vector<int32_t>(128, 8192), 132, 2).splits.back(), 128);
  EXPECT_GT(run_plan(std::vector<int32_t>(128, 16384), 132, 2).splits.back(), 128);
  check_plan(std::vector<int32_t>(128, 8192), 132, {1, 3, 32, 512}, 2);
  // More sequences than parts: split (the bound alone would allow whole sequences).
  EXPECT_GT(splits_of(std::vector<int32_t>(133, 4096), 132), 133);
  // The edge of the rule: 131 sequences of cost 20 and one of cost c, 132 parts.
  for (int c = 20; c < 40; ++c) {
    std::vector<int32_t> seqlens(132, 15 * 64);  // cost 15 + 5
    seqlens[7] = (c - kOv) * 64;
    const int64_t total = 131 * 20 + c, pay = (total + 131) / 132;
    const bool whole = c <= pay + kOv;
    SCOPED_TRACE("c=" + std::to_string(c) + " pay=" + std::to_string(pay));
    check_plan(seqlens, 132);
    EXPECT_EQ(splits_of(seqlens, 132) == 132, whole);
  }
  // Empty sequences keep their (empty) part; num_splits counts the non-empty ones. Cost 20,
  // P = ceil(6 * 20 / 8) = 15: 20 <= 20.
  const std::vector<int32_t> gaps = {960, 0, 960, -3, 960, 960, 960, 960};
  check_plan(gaps, 8);
  const Plan g = run_plan(gaps, 8);
  EXPECT_EQ(g.splits, (std::vector<int32_t>{0, 1, 1, 2, 2, 3, 4, 5, 6}));
}

TEST(Planner, RandomBatches) {
  std::mt19937 rng(20240607);
  std::uniform_int_distribution<int> kind(0, 6), parts_dist(1, 264);
  for (int trial = 0; trial < 3000; ++trial) {
    // Batch sizes skewed towards small ones, but reaching 4096.
    const int b = trial % 8 == 0   ? std::uniform_int_distribution<int>(1, 4096)(rng)
                  : trial % 4 == 0 ? std::uniform_int_distribution<int>(1, 1024)(rng)
                                   : std::uniform_int_distribution<int>(1, 64)(rng);
    const std::vector<int32_t> seqlens = random_seqlens(rng, b, kind(rng));
    // The overheads in use (plan::split_overhead_blocks), the measured alternative 2, and edges.
    const int ovs[] = {plan::split_overhead_blocks(16), plan::split_overhead_blocks(64), 2, 0, 1, 8};
    check_plan(seqlens, parts_dist(rng), {1, 3, 512}, ovs[trial % 6]);
    if (HasFatalFailure()) return;
  }
}

TEST(Planner, HugeBatch) {
  std::mt19937 rng(70000);
  for (int kind : {0, 3, 5}) {
    const std::vector<int32_t> seqlens = random_seqlens(rng, 70000, kind);
    for (int parts : {1, 78, 132, 264}) {
      check_plan(seqlens, parts, {512, 1000});
      if (HasFatalFailure()) return;
    }
  }
}

TEST(Planner, EveryPartCountForOneBatch) {
  std::mt19937 rng(7);
  const std::vector<int32_t> seqlens = random_seqlens(rng, 37, 1);
  const std::vector<int32_t> tiny = random_seqlens(rng, 300, 6);
  for (int parts = 1; parts <= 264; ++parts) {
    check_plan(seqlens, parts);
    check_plan(tiny, parts);
    check_plan(tiny, parts, {1, 3, 32, 512}, 1);
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
