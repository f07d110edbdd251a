// CPU reference for dense MLA decode: the oracle for the GPU tests on small shapes.
//
// Everything is dense and on the host, accumulated in fp64 from the bf16 inputs:
//   q            [batch, seqlen_q, num_heads_q, 576]     bf16 bits
//   k_cache      [num_blocks, page, num_heads_kv, 576]   bf16 bits; V = first 512 columns
//   block_table  [batch, max_blocks_per_seq]             page ids; token t is in entry t / page
//   seqlens      [batch]                                 0 <= L <= max_blocks_per_seq * page
//   out          [batch, seqlen_q, num_heads_q, 512]     float (not rounded to bf16)
//   lse          [batch, num_heads_q, seqlen_q]          float, natural log, +inf if no key
// Causal: query token i sees keys 0 .. L - seqlen_q + i; a row that sees no key gets out = 0
// and lse = +inf. Only table entries that cover live tokens are read, so unused entries and
// unused page slots may hold anything (the tests fill them with garbage / NaN).
// page = CpuProblem::page_block_size, a power of two in [1, 256] like the kernels accept.
#pragma once

#include <cstdint>

namespace flashmla::reference {

struct CpuProblem {
  int batch = 0;
  int seqlen_q = 0;
  int num_heads_q = 0;
  int num_heads_kv = 1;
  int num_blocks = 0;
  int max_blocks_per_seq = 0;
  int page_block_size = 64;  // tokens per page
  float softmax_scale = 0.f;
  bool causal = false;
};

// Throws std::invalid_argument on inconsistent shapes, a page size the kernels do not
// accept, a seqlen beyond the table, or a live page id outside [0, num_blocks): a broken
// test setup should fail loudly.
void mla_decode_cpu(const CpuProblem& p, const uint16_t* q, const uint16_t* k_cache,
                    const int32_t* block_table, const int32_t* seqlens, float* out, float* lse);

// Number of keys query token `s` (0-based) of a sequence of length `seqlen` sees.
inline int visible_keys(int seqlen, int seqlen_q, int s, bool causal) {
  if (!causal) return seqlen;
  const int n = seqlen - seqlen_q + s + 1;
  return n < 0 ? 0 : (n > seqlen ? seqlen : n);
}

}  // namespace flashmla::reference
