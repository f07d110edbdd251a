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

__all__ = ["get_mla_metadata", "flash_mla_with_kvcache"]
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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MLA decode attention over a paged KV cache.

    Args:
        q: bf16 or fp16 [batch, s_q, h_q, 576].
        k_cache: q's dtype, [num_blocks, 64, h_kv, 576]; V is its first head_dim_v columns.
        block_table: int32 [batch, max_blocks_per_seq] page ids.
        cache_seqlens: int32 [batch].
        head_dim_v: 512.
        tile_scheduler_metadata, num_splits: from get_mla_metadata.
        softmax_scale: defaults to 1 / sqrt(576).
        causal: with s_q > 1, query i of a sequence of length L sees keys 0 .. L - s_q + i.

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
    )
