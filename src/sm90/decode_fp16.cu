// FP16 instantiation of the sm90 decode kernel and its launcher.
#include "sm90/decode_launch.cuh"

namespace flashmla::detail {
template void launch_decode<__half>(const MlaDecodeParams&, cudaStream_t);
}  // namespace flashmla::detail
