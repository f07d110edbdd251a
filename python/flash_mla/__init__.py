"""flash_mla: FlashMLA-compatible Multi-head Latent Attention decoding for Hopper (sm_90a).

Drop-in for DeepSeek's FlashMLA dense decode API::

    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    for each layer:
        o, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                        tile_scheduler_metadata, num_splits, causal=True)

The kernels live in the torch-free C++ core (libflashmla); this package only exposes them as
torch.ops.flash_mla.* (registered by importing the ``_C`` extension).
"""

from typing import Optional, Tuple

import torch  # before _C: the extension links against libtorch and registers with its dispatcher

from . import _C  # noqa: F401  (import registers torch.ops.flash_mla.*)
from . import _fake  # noqa: F401  (fake kernels, so torch.compile can trace the ops)

__all__ = ["get_mla_metadata", "flash_mla_with_kvcache", "quantize_kv_fp8", "dequantize_kv_fp8"]
__version__ = "0.1.0"


def get_mla_metadata(
    cache_seqlens: torch.Tensor,
    num_q_tokens_per_head_k: int,
    num_heads_k: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plan the split-KV schedule for one decode step (on the GPU, no host sync).

    Args:
        cache_seqlens: int32 [batch] on the GPU, KV length of each sequence (may be 0).
        num_q_tokens_per_head_k: s_q * h_q // h_kv, the query rows sharing one kv head.
        num_heads_k: h_kv.

    Returns:
        tile_scheduler_metadata: int32 [num_sm_parts, 8]; num_splits: int32 [batch + 1].
        Their shapes depend on batch, the two ints and the GPU, never on the lengths, so a
        captured CUDA graph stays valid; compute them once per step, reuse them in every layer.
    """
    return torch.ops.flash_mla.get_mla_metadata(
        cache_seqlens, num_q_tokens_per_head_k, num_heads_k
    )


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MLA decode attention over a paged KV cache.

    Args:
        q: bf16 or fp16 [batch, s_q, h_q, 576].
        k_cache: q's dtype, [num_blocks, page_block_size, h_kv, 576] with page_block_size a power
            of two from 1 to 256; V is its first head_dim_v columns. With is_fp8_kvcache=True:
            float8_e4m3fn (or uint8) [num_blocks, page_block_size, h_kv, 656] records from
            quantize_kv_fp8, and q must be bf16.
        block_table: int32 [batch, max_blocks_per_seq] page ids, each in [0, num_blocks) where
            it covers a live token.
        cache_seqlens: int32 [batch], each in [0, max_blocks_per_seq * page_block_size].
        head_dim_v: 512.
        tile_scheduler_metadata, num_splits: both from one get_mla_metadata call on these same
            cache_seqlens values.

    The lengths, page ids and metadata live on the GPU and are not read on the host (no sync,
    graph-capturable), so the requirements above are the caller's. Broken ones cannot hang or
    read/write out of bounds: a sequence whose length is negative or longer than its table row,
    or that a mismatched metadata pair cannot merge, comes out as NaN (otherwise the result
    of a mismatch is unspecified); an invalid page id reads as zeros (or page 0 below 16 tokens).
        softmax_scale: defaults to 1 / sqrt(576).
        causal: with s_q > 1, query i of a sequence of length L sees keys 0 .. L - s_q + i.
        is_fp8_kvcache: k_cache holds FP8-with-scale records (dequantized to bf16 on the fly).

    Returns:
        out: q's dtype, [batch, s_q, h_q, head_dim_v]; lse: fp32 [batch, h_q, s_q], the natural-log
        softmax denominator (+inf where a query sees no key; out is 0 there).
    """
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** (-0.5)
    return torch.ops.flash_mla.fwd_kvcache_mla(
        q,
        k_cache,
        block_table,
        cache_seqlens,
        head_dim_v,
        tile_scheduler_metadata,
        num_splits,
        softmax_scale,
        causal,
        is_fp8_kvcache,
    )


def quantize_kv_fp8(kv: torch.Tensor) -> torch.Tensor:
    """bf16 KV cache [..., 576] -> FP8-with-scale records [..., 656] (float8_e4m3fn bytes).

    Per token: bytes 0..511 are the 512 latent values as e4m3, each divided by its group's
    scale; bytes 512..527 are 4 float32 scales, scale g = max |latent[128g : 128g+128]| / 448
    (1 for an all-zero group); bytes 528..655 are the 64 RoPE values as bf16, unchanged.
    FlashMLA's "FP8 with scale" dense format. Pass the result as k_cache with
    is_fp8_kvcache=True. Runs on the GPU, asynchronously.
    """
    return torch.ops.flash_mla.quantize_kv_fp8(kv)


def dequantize_kv_fp8(kv_fp8: torch.Tensor) -> torch.Tensor:
    """FP8-with-scale records [..., 656] (float8_e4m3fn or uint8) -> bf16 [..., 576]:
    latent = e4m3 * scale (rounded to bf16), RoPE as stored. Inverse of quantize_kv_fp8 up to
    the e4m3 rounding."""
    return torch.ops.flash_mla.dequantize_kv_fp8(kv_fp8)
