"""Shared by tests/python/test_ops.py and tests/test_flash_mla.py: loading flash_mla, making
adversarial paged inputs, and a plain torch reference of FlashMLA's dense MLA decode.

Import only after checking that torch imports (this module needs it)."""

import math
import sys
from pathlib import Path

import torch

HEAD_DIM = 576  # latent 512 + RoPE 64
HEAD_DIM_V = 512
PAGE = 64
UNUSED_PAGE_ID = 2**31 - 1  # block-table entries past a sequence's end: reading one faults
REPO = Path(__file__).resolve().parents[1]

# The float32 reference must not silently drop to TF32 products.
torch.backends.cuda.matmul.allow_tf32 = False

# Element types the kernel takes for q / k_cache / out (lse is always float32).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def as_dtype(dtype):
    """torch.bfloat16 / torch.float16, or their names "bf16" / "fp16", as a torch dtype."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {list(DTYPES)} / {list(DTYPES.values())}, "
                         f"got {dtype}")
    return dtype


def skip_reason():
    """Why the GPU tests cannot run here, or None. Imports flash_mla (from the installed
    package, else from an in-place build in python/)."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        return f"flashmla needs a Hopper GPU (sm_90), found sm_{major}{minor}"
    try:
        import flash_mla  # noqa: F401
    except ImportError as first:
        # `python setup.py build_ext --inplace` leaves _C*.so in python/flash_mla.
        if not list((REPO / "python" / "flash_mla").glob("_C*.so")):
            return f"flash_mla is not built/installed ({first})"
        sys.path.insert(0, str(REPO / "python"))
        sys.modules.pop("flash_mla", None)
        try:
            import flash_mla  # noqa: F401,F811
        except ImportError as e:
            return f"flash_mla in-place build does not import ({e})"
    return None


def make_block_table(seqlens, max_blocks=None, num_blocks=None, generator=None, device="cuda"):
    """Random permuted page assignment. Returns (block_table int32 [b, max_blocks] on device,
    num_blocks). Pages not used by any sequence exist (they get NaN), and table entries past
    each sequence's pages hold UNUSED_PAGE_ID."""
    nblk = [math.ceil(L / PAGE) for L in seqlens]
    used = sum(nblk)
    max_blocks = max_blocks or max(nblk + [1]) + 1
    num_blocks = num_blocks or used + 3
    assert max(nblk + [0]) <= max_blocks and used <= num_blocks
    perm = torch.randperm(num_blocks, generator=generator, dtype=torch.int32)
    table = torch.full((len(seqlens), max_blocks), UNUSED_PAGE_ID, dtype=torch.int32)
    off = 0
    for i, n in enumerate(nblk):
        table[i, :n] = perm[off : off + n]
        off += n
    return table.to(device), num_blocks


def valid_slot_mask(block_table, seqlens, num_blocks):
    """Bool [num_blocks * 64]: True for cache slots that hold a token of some sequence."""
    device = block_table.device
    lens = torch.tensor(seqlens, dtype=torch.int64, device=device)
    total = int(lens.sum())
    valid = torch.zeros(num_blocks * PAGE, dtype=torch.bool, device=device)
    if total == 0:
        return valid
    seq = torch.repeat_interleave(torch.arange(len(seqlens), device=device), lens)
    start = torch.cumsum(lens, 0) - lens
    tok = torch.arange(total, device=device) - start[seq]
    page = block_table[seq, tok // PAGE].long()
    valid[page * PAGE + tok % PAGE] = True
    return valid


def make_kv_cache(num_blocks, h_kv, block_table, seqlens, dtype=torch.bfloat16, scale=1.0):
    """Random cache [num_blocks, 64, h_kv, 576] of dtype (bfloat16 or float16); every slot that
    is not a token of some sequence (unused pages, tails of partial pages) is NaN, so a kernel
    reading one shows (both dtypes have a NaN)."""
    device = block_table.device
    kv = torch.randn(num_blocks, PAGE, h_kv, HEAD_DIM, device=device, dtype=as_dtype(dtype))
    if scale != 1.0:
        kv *= scale
    valid = valid_slot_mask(block_table, seqlens, num_blocks)
    kv.view(num_blocks * PAGE, h_kv * HEAD_DIM)[~valid] = float("nan")
    return kv


def make_q(b, s_q, h_q, device="cuda", dtype=torch.bfloat16, scale=1.0):
    """Random q [b, s_q, h_q, 576] of dtype (bfloat16 or float16)."""
    q = torch.randn(b, s_q, h_q, HEAD_DIM, device=device, dtype=as_dtype(dtype))
    return q * scale if scale != 1.0 else q


def reference_mla(q, k_cache, block_table, seqlens, softmax_scale, causal, batch_ids=None,
                  compute_dtype=torch.float64, head_dim_v=HEAD_DIM_V):
    """Plain-torch MLA decode for the sequences in batch_ids (all by default).

    q and k_cache may be any floating dtype (bfloat16, float16, ...): both are upcast to
    compute_dtype (float32 or float64) before any arithmetic.

    Returns out [n, s_q, h_q, dv] and lse [n, h_q, s_q] in compute_dtype. A query that sees no
    key (empty sequence, or causal with L < s_q) gets out = 0 and lse = +inf, as FlashMLA."""
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be float32 or float64, got {compute_dtype}")
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    g = h_q // h_kv
    ids = list(range(b)) if batch_ids is None else list(batch_ids)
    dev = q.device
    out = torch.zeros(len(ids), s_q, h_q, head_dim_v, dtype=compute_dtype, device=dev)
    lse = torch.full((len(ids), h_q, s_q), math.inf, dtype=compute_dtype, device=dev)
    for row, i in enumerate(ids):
        L = int(seqlens[i])
        if L == 0:
            continue
        n = math.ceil(L / PAGE)
        kv = k_cache[block_table[i, :n].long()].reshape(n * PAGE, h_kv, d)[:L].to(compute_dtype)
        qi = q[i].to(compute_dtype).reshape(s_q, h_kv, g, d)  # head h = kv head (h // g), h % g
        s = torch.einsum("sjgd,ljd->jgsl", qi, kv) * softmax_scale  # [h_kv, g, s_q, L]
        if causal:
            # query t sees keys 0 .. L - s_q + t
            last = L - s_q + torch.arange(s_q, device=dev)
            hidden = torch.arange(L, device=dev)[None, :] > last[:, None]  # [s_q, L]
            s = s.masked_fill(hidden, -math.inf)
        m = torch.logsumexp(s, dim=-1)  # [h_kv, g, s_q]; -inf where nothing is visible
        empty = torch.isinf(m)
        p = torch.exp(s - torch.where(empty, 0.0, m)[..., None])  # exp(-inf) = 0: no NaN
        o = torch.einsum("jgsl,ljd->sjgd", p, kv[..., :head_dim_v])
        out[row] = o.reshape(s_q, h_q, head_dim_v)
        lse[row] = torch.where(empty, math.inf, m).reshape(h_q, s_q)
    return out, lse


def expected_inf_lse(seqlens, s_q, h_q, causal, device="cuda"):
    """Bool [b, h_q, s_q]: where lse must be +inf (the query sees no key)."""
    lens = torch.tensor(seqlens, dtype=torch.int64, device=device)[:, None]
    t = torch.arange(s_q, device=device)[None, :]
    visible = lens - s_q + t + 1 if causal else lens.expand(-1, s_q)
    return (visible <= 0)[:, None, :].expand(-1, h_q, -1)


def compare(out, lse, ref_out, ref_lse):
    """Errors of a kernel result against the reference (same batch rows). Returns a dict:
    rel (||out - ref|| / ||ref||), lse_err (max |lse - ref| / max(1, |ref|)), and the bools
    nan (any NaN in out/lse), inf_mismatch (+inf positions of lse differ, or out not 0 there).

    Any dtypes (bf16 / fp16 / fp32 / fp64, on either side): everything is compared in the wider
    of the reference's dtype and float32."""
    cd = torch.promote_types(torch.promote_types(ref_out.dtype, ref_lse.dtype), torch.float32)
    out, ref_out = out.to(cd), ref_out.to(cd)
    lse, ref_lse = lse.to(cd), ref_lse.to(cd)
    ref_inf = torch.isposinf(ref_lse)
    nan = bool(out.isnan().any() or lse.isnan().any())
    inf_mismatch = not torch.equal(torch.isposinf(lse), ref_inf) or bool(torch.isneginf(lse).any())
    # out rows of a query with no visible key must be exactly zero
    dead = ref_inf.transpose(1, 2)  # [n, s_q, h_q]
    if bool(dead.any()) and bool(out[dead].ne(0).any()):
        inf_mismatch = True
    denom = ref_out.norm()
    diff = (out - ref_out).norm()
    rel = float(diff / denom) if float(denom) > 0 else float(diff)
    fin = ~ref_inf & torch.isfinite(lse)
    if bool(fin.any()):
        lse_err = float(((lse - ref_lse).abs() / ref_lse.abs().clamp(min=1.0))[fin].max())
    else:
        lse_err = 0.0
    return {"rel": rel, "lse_err": lse_err, "nan": nan, "inf_mismatch": inf_mismatch}


def passes(errs, rel_tol=1e-2, lse_tol=1e-3):
    return (errs["rel"] < rel_tol and errs["lse_err"] < lse_tol and not errs["nan"]
            and not errs["inf_mismatch"])
