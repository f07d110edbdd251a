#include "reference/reference_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference/bf16.h"

namespace flashmla::reference {
namespace {

constexpr int kD = 576;
constexpr int kDv = 512;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("mla_decode_cpu: " + what);
}

}  // namespace

void mla_decode_cpu(const CpuProblem& p, const uint16_t* q, const uint16_t* k_cache,
                    const int32_t* block_table, const int32_t* seqlens, float* out, float* lse) {
  require(p.batch >= 1 && p.seqlen_q >= 1 && p.num_heads_q >= 1 && p.num_heads_kv >= 1,
          "batch, seqlen_q, num_heads_q, num_heads_kv must be >= 1");
  require(p.num_heads_q % p.num_heads_kv == 0, "num_heads_q % num_heads_kv != 0");
  require(p.max_blocks_per_seq >= 1 && p.num_blocks >= 1, "empty block table or cache");
  const int page_size = p.page_block_size;
  require(page_size >= 1 && page_size <= 256 && (page_size & (page_size - 1)) == 0,
          "page_block_size must be a power of two in [1, 256], got " + std::to_string(page_size));
  const int group = p.num_heads_q / p.num_heads_kv;
  const double scale = p.softmax_scale;

  // K rows of one (sequence, kv head), decoded once and shared by the `group` q heads.
  std::vector<float> keys;
  std::vector<double> score, acc(kDv), qrow(kD);

  for (int b = 0; b < p.batch; ++b) {
    const int L = seqlens[b];
    require(L >= 0 && static_cast<int64_t>(L) <= static_cast<int64_t>(p.max_blocks_per_seq) * page_size,
            "seqlens[" + std::to_string(b) + "] = " + std::to_string(L) + " out of range");
    const int32_t* table = block_table + static_cast<int64_t>(b) * p.max_blocks_per_seq;

    for (int hk = 0; hk < p.num_heads_kv; ++hk) {
      keys.resize(static_cast<size_t>(L) * kD);
      for (int t = 0; t < L; ++t) {
        const int page = table[t / page_size];
        require(page >= 0 && page < p.num_blocks,
                "block_table[" + std::to_string(b) + "][" + std::to_string(t / page_size) +
                    "] = " + std::to_string(page) + " out of range");
        const uint16_t* row =
            k_cache +
            ((static_cast<int64_t>(page) * page_size + t % page_size) * p.num_heads_kv + hk) * kD;
        for (int c = 0; c < kD; ++c) keys[static_cast<size_t>(t) * kD + c] = bf16_to_float(row[c]);
      }

      for (int g = 0; g < group; ++g) {
        const int h = hk * group + g;
        for (int s = 0; s < p.seqlen_q; ++s) {
          const int64_t qi = (static_cast<int64_t>(b) * p.seqlen_q + s) * p.num_heads_q + h;
          float* o = out + qi * kDv;
          float& l = lse[(static_cast<int64_t>(b) * p.num_heads_q + h) * p.seqlen_q + s];

          const int n = visible_keys(L, p.seqlen_q, s, p.causal);
          if (n == 0) {
            std::fill(o, o + kDv, 0.f);
            l = std::numeric_limits<float>::infinity();
            continue;
          }
          for (int c = 0; c < kD; ++c) qrow[c] = bf16_to_float(q[qi * kD + c]);

          score.resize(n);
          double mx = -std::numeric_limits<double>::infinity();
          for (int t = 0; t < n; ++t) {
            const float* k = &keys[static_cast<size_t>(t) * kD];
            double dot = 0;
            for (int c = 0; c < kD; ++c) dot += qrow[c] * k[c];
            score[t] = dot * scale;
            mx = std::max(mx, score[t]);
          }
          double sum = 0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int t = 0; t < n; ++t) {
            const double w = std::exp(score[t] - mx);
            sum += w;
            const float* v = &keys[static_cast<size_t>(t) * kD];
            for (int c = 0; c < kDv; ++c) acc[c] += w * v[c];
          }
          for (int c = 0; c < kDv; ++c) o[c] = static_cast<float>(acc[c] / sum);
          l = static_cast<float>(mx + std::log(sum));
        }
      }
    }
  }
}

}  // namespace flashmla::reference
