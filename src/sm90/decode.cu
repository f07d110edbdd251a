// Picks the decode instantiation for MlaDecodeParams::dtype.
#include "element.cuh"
#include "internal.h"
#include "sm90/decode.h"

namespace flashmla::detail {

void launch_decode_sm90(const MlaDecodeParams& p, cudaStream_t stream) {
  dispatch_element(p.dtype, [&](auto element) { launch_decode<decltype(element)>(p, stream); });
}

}  // namespace flashmla::detail
