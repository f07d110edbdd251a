// BF16 instantiation of the sm90 decode kernel and its launcher.
#include "sm90/decode_launch.cuh"

namespace flashmla::detail {
template void launch_decode<__nv_bfloat16>(const MlaDecodeParams&, cudaStream_t);
}  // namespace flashmla::detail
