"""Fake (meta) kernels of torch.ops.flash_mla.*: output shapes and dtypes without running
anything, which torch.compile / FakeTensor tracing needs for ops it cannot look into."""

import torch

from . import _C

# register_fake appeared in torch 2.4; impl_abstract is its older name.
_register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract


def _sm_count(device: torch.device) -> int:
    # Meta tensors carry no GPU: fall back to the current one, like the real op would run on.
    if device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return torch.cuda.get_device_properties(device).multi_processor_count


@_register_fake("flash_mla::get_mla_metadata")
def _get_mla_metadata_fake(cache_seqlens, num_q_tokens_per_head_k, num_heads_k):
    # The core's own num_sm_parts (exposed by _C), so traced and real shapes always agree.
    # int(): the count must be concrete (it is a shape), also if the ints were traced as symbols
    parts = _C.num_sm_parts(
        _sm_count(cache_seqlens.device), int(num_q_tokens_per_head_k), int(num_heads_k)
    )
    batch = cache_seqlens.shape[0]
    metadata = cache_seqlens.new_empty((parts, 8), dtype=torch.int32)
    num_splits = cache_seqlens.new_empty((batch + 1,), dtype=torch.int32)
    return metadata, num_splits


@_register_fake("flash_mla::fwd_kvcache_mla")
def _fwd_kvcache_mla_fake(
    q,
    k_cache,
    block_table,
    cache_seqlens,
    head_dim_v,
    tile_scheduler_metadata,
    num_splits,
    softmax_scale,
    causal,
    is_fp8_kvcache=False,
):
    batch, seqlen_q, num_heads_q, _ = q.shape
    out = q.new_empty((batch, seqlen_q, num_heads_q, head_dim_v))
    lse = q.new_empty((batch, num_heads_q, seqlen_q), dtype=torch.float32)
    return out, lse


@_register_fake("flash_mla::quantize_kv_fp8")
def _quantize_kv_fp8_fake(kv):
    return kv.new_empty((*kv.shape[:-1], 656), dtype=torch.float8_e4m3fn)


@_register_fake("flash_mla::dequantize_kv_fp8")
def _dequantize_kv_fp8_fake(kv_fp8):
    return kv_fp8.new_empty((*kv_fp8.shape[:-1], 576), dtype=torch.bfloat16)
