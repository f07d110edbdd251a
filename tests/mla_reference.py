"""Shared by tests/python/test_ops.py and tests/test_flash_mla.py: loading flash_mla, making
adversarial paged inputs, and a plain torch reference of FlashMLA's dense MLA decode (bf16 /
fp16 caches, and FP8-with-scale caches through an independent pure-torch FP8 oracle).

Import only after checking that torch imports (this module needs it)."""

import math
import os
import sys
from pathlib import Path

import torch

HEAD_DIM = 576  # latent 512 + RoPE 64
HEAD_DIM_V = 512
PAGE = 64  # default KV page size (tokens per page); the kernel takes powers of two 1 .. 256
UNUSED_PAGE_ID = 2**31 - 1  # block-table entries past a sequence's end: reading one faults
REPO = Path(__file__).resolve().parents[1]

# The float32 reference must not silently drop to TF32 products.
torch.backends.cuda.matmul.allow_tf32 = False

# Element types the kernel takes for q / k_cache / out (lse is always float32).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# FP8-with-scale KV cache (FlashMLA's dense "FP8 with scale" format), one record per token and
# kv head: bytes [0, 512) e4m3 latents (value / scale of its group), [512, 528) 4 float32 scales
# (scale g covers latent dims [128 g, 128 g + 128)), [528, 656) the 64 RoPE dims as bf16.
FP8_TOKEN_BYTES = 656
FP8_SCALE_GROUP = 128
FP8_GROUPS = HEAD_DIM_V // FP8_SCALE_GROUP  # 4
FP8_SCALE_OFFSET = HEAD_DIM_V  # 512
FP8_ROPE_OFFSET = FP8_SCALE_OFFSET + 4 * FP8_GROUPS  # 528
E4M3_MAX = 448.0
# Written over every record that holds no live token: 0xFF is NaN as an e4m3 value, as a
# float32 scale and as a bf16 RoPE value, so a kernel that reads such a record shows it.
FP8_POISON_BYTE = 0xFF


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


def pages_for(L, page=PAGE):
    """Pages (block-table entries) a sequence of L tokens uses: ceil(L / page)."""
    return (int(L) + page - 1) // page


def make_block_table(seqlens, max_blocks=None, num_blocks=None, generator=None, device="cuda",
                     page=PAGE):
    """Random permuted page assignment for pages of `page` tokens. Returns (block_table int32
    [b, max_blocks] on device, num_blocks). Pages not used by any sequence exist (they get NaN),
    and table entries past each sequence's ceil(L / page) pages hold UNUSED_PAGE_ID."""
    if page < 1:
        raise ValueError(f"page must be >= 1, got {page}")
    nblk = [pages_for(L, page) for L in seqlens]
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


def check_table_page(block_table, seqlens, page):
    """ValueError unless each row i of block_table holds exactly ceil(seqlens[i] / page) page ids
    (the rest UNUSED_PAGE_ID), i.e. unless the table was made for this page size."""
    used = (block_table != UNUSED_PAGE_ID).sum(1).tolist()
    want = [pages_for(L, page) for L in seqlens]
    if used != want:
        raise ValueError(f"block_table holds {used} pages per sequence, page size {page} needs "
                         f"{want}: made with another page size?")


def valid_slot_mask(block_table, seqlens, num_blocks, page=PAGE):
    """Bool [num_blocks * page]: True for cache slots that hold a token of some sequence."""
    check_table_page(block_table, seqlens, page)
    device = block_table.device
    lens = torch.tensor(seqlens, dtype=torch.int64, device=device)
    total = int(lens.sum())
    valid = torch.zeros(num_blocks * page, dtype=torch.bool, device=device)
    if total == 0:
        return valid
    seq = torch.repeat_interleave(torch.arange(len(seqlens), device=device), lens)
    start = torch.cumsum(lens, 0) - lens
    tok = torch.arange(total, device=device) - start[seq]
    page_id = block_table[seq, tok // page].long()
    valid[page_id * page + tok % page] = True
    return valid


def make_kv_cache(num_blocks, h_kv, block_table, seqlens, dtype=torch.bfloat16, scale=1.0,
                  page=PAGE):
    """Random cache [num_blocks, page, h_kv, 576] of dtype (bfloat16 or float16); every slot
    that is not a token of some sequence (unused pages, tails of partial pages) is NaN, so a
    kernel reading one shows (both dtypes have a NaN). page must be the one block_table was
    made with (checked); everything downstream reads it back as kv.shape[1]."""
    device = block_table.device
    kv = torch.randn(num_blocks, page, h_kv, HEAD_DIM, device=device, dtype=as_dtype(dtype))
    if scale != 1.0:
        kv *= scale
    valid = valid_slot_mask(block_table, seqlens, num_blocks, page)
    kv.view(num_blocks * page, h_kv * HEAD_DIM)[~valid] = float("nan")
    return kv


def make_q(b, s_q, h_q, device="cuda", dtype=torch.bfloat16, scale=1.0):
    """Random q [b, s_q, h_q, 576] of dtype (bfloat16 or float16)."""
    q = torch.randn(b, s_q, h_q, HEAD_DIM, device=device, dtype=as_dtype(dtype))
    return q * scale if scale != 1.0 else q


# ---------------------------------------------------------------------------------------
# FP8-with-scale cache: an oracle written from the format's definition with plain torch ops,
# independent of flash_mla's kernels (which tests/python/test_ops.py checks against it).


def is_fp8_cache(k_cache):
    """True for FP8-with-scale records: float8_e4m3fn or uint8 with last dim 656 (bytes)."""
    return (k_cache.dtype in (torch.float8_e4m3fn, torch.uint8)
            and k_cache.dim() >= 1 and k_cache.shape[-1] == FP8_TOKEN_BYTES)


def _e4m3_values(device):
    """float64 [256]: the exact value of every e4m3 (float8_e4m3fn) code, from the bit
    definition (1 sign, 4 exponent bits with bias 7, 3 mantissa bits, subnormals below 2^-6,
    0x7F / 0xFF NaN, no infinities), not from torch's float8 conversion."""
    codes = torch.arange(256, dtype=torch.int64)
    exponent = (codes >> 3) & 0xF
    mantissa = (codes & 7).to(torch.float64)
    magnitude = torch.where(exponent == 0, mantissa * 2.0**-9,
                            (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7).to(torch.float64))
    values = torch.where(codes >= 128, -magnitude, magnitude)  # code 0x80 is -0.0
    values[(codes & 0x7F) == 0x7F] = math.nan
    return values.to(device)


def quantize_fp8_reference(kv):
    """bf16 [..., 576] -> FP8-with-scale records, float8_e4m3fn [..., 656] (bytes), on kv's
    device. Per token and group g of 128 latent dims: scale_g = amax_g / 448 as an IEEE fp32
    division (1 if the group is all zero; a NaN is left out of amax), code_d = e4m3 of the fp32
    quotient latent_d / scale_g (round to nearest even, saturated to +-448, NaN -> 0x7F); the
    4 scales are stored as float32 bytes and the RoPE dims as their bf16 bytes.

    fp32 results are computed in float64 and then rounded to float32: for a division of two
    fp32 numbers that double rounding is harmless (53 >= 2 * 24 + 2 bits), so this is the
    correctly rounded fp32 quotient the kernel's __fdiv_rn gives. Every divisor is a tensor on
    kv's device: torch turns a division by a Python scalar on CUDA into a multiplication by
    its reciprocal, which is not the correctly rounded quotient."""
    if kv.dtype != torch.bfloat16:
        raise ValueError(f"kv must be bfloat16, got {kv.dtype}")
    if kv.dim() < 1 or kv.shape[-1] != HEAD_DIM:
        raise ValueError(f"kv last dim must be {HEAD_DIM}, got shape {tuple(kv.shape)}")
    lead = kv.shape[:-1]
    rows = kv.reshape(-1, HEAD_DIM)
    n = rows.shape[0]
    latent = rows[:, :HEAD_DIM_V].to(torch.float64).reshape(n, FP8_GROUPS, FP8_SCALE_GROUP)
    mag = latent.abs()
    amax = torch.where(torch.isnan(mag), torch.zeros_like(mag), mag).amax(dim=-1)  # [n, 4]
    scale = torch.where(amax == 0, torch.ones_like(amax),
                        amax / torch.full_like(amax, E4M3_MAX)).to(torch.float32)
    quotient = (latent / scale.to(torch.float64)[..., None]).to(torch.float32)
    # Clamp before the cast: some torch versions turn |x| >= 480 into NaN instead of 448.
    codes = quotient.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    # torch keeps a NaN's sign (0xFF for -NaN); the format writes every NaN as 0x7F.
    codes = torch.where(torch.isnan(quotient), torch.full_like(codes, 0x7F), codes)
    record = torch.cat([codes.reshape(n, HEAD_DIM_V),
                        scale.contiguous().view(torch.uint8),  # [n, 16], little-endian float32
                        rows[:, HEAD_DIM_V:].contiguous().view(torch.uint8)],  # [n, 128]
                       dim=-1)
    return record.view(torch.float8_e4m3fn).reshape(*lead, FP8_TOKEN_BYTES)


def dequantize_fp8_reference(records, dtype=torch.float64):
    """FP8-with-scale records (float8_e4m3fn or uint8 [..., 656]) -> [..., 576] in dtype
    (float64 or float32): latent_d = e4m3_d * scale_{d // 128} computed exactly in float64 (a
    4-bit by 24-bit product) and then converted once to dtype, RoPE as stored. Never rounded
    to bf16: float64 is the format's exact value; float32 is the correctly rounded fp32
    product that the kernels compute before their bf16 rounding (see
    dequantize_fp8_bf16_reference). A NaN code, scale or RoPE value gives NaN."""
    if not is_fp8_cache(records):
        raise ValueError(f"records must be float8_e4m3fn or uint8 [..., {FP8_TOKEN_BYTES}], got "
                         f"{records.dtype} {tuple(records.shape)}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    raw = records if records.dtype == torch.uint8 else records.view(torch.uint8)
    lead = raw.shape[:-1]
    r = raw.reshape(-1, FP8_TOKEN_BYTES)
    n = r.shape[0]
    values = _e4m3_values(r.device)[r[:, :HEAD_DIM_V].long()]
    values = values.reshape(n, FP8_GROUPS, FP8_SCALE_GROUP)
    scales = r[:, FP8_SCALE_OFFSET:FP8_ROPE_OFFSET].contiguous().view(torch.float32)
    rope = r[:, FP8_ROPE_OFFSET:].contiguous().view(torch.bfloat16)
    latent = (values * scales.to(torch.float64)[..., None]).reshape(n, HEAD_DIM_V)
    out = torch.cat([latent, rope.to(torch.float64)], dim=-1)
    return out.to(dtype).reshape(*lead, HEAD_DIM)


def dequantize_fp8_bf16_reference(records):
    """The bf16 values of FP8 records that flash_mla.dequantize_kv_fp8 returns and that the
    decode kernel feeds its bf16 MMAs: the fp32 product rounded to bf16. Rounding the exact
    (float64) product straight to bf16 would differ now and then, where the fp32 rounding
    lands exactly on a bf16 tie."""
    return dequantize_fp8_reference(records, torch.float32).to(torch.bfloat16)


def poison_fp8_cache(records, block_table, seqlens):
    """Sets every byte of every record [num_blocks, page, h_kv, 656] that holds no token of
    some sequence (spare pages, tails of partial pages) to 0xFF, in place; returns records.
    records must be contiguous (as quantize_kv_fp8 / quantize_fp8_reference return it)."""
    num_blocks, page = records.shape[0], records.shape[1]
    valid = valid_slot_mask(block_table, seqlens, num_blocks, page)
    raw = records if records.dtype == torch.uint8 else records.view(torch.uint8)
    raw.view(num_blocks * page, -1)[~valid] = FP8_POISON_BYTE
    return records


def make_fp8_kv_cache(num_blocks, h_kv, block_table, seqlens, scale=1.0, page=PAGE,
                      quantize=None):
    """FP8-with-scale cache float8_e4m3fn [num_blocks, page, h_kv, 656]: make_kv_cache's random
    bf16 cache quantized by `quantize` (default quantize_fp8_reference; pass
    flash_mla.quantize_kv_fp8 for the library's kernel), then every record that is not a live
    token poisoned with 0xFF bytes."""
    kv = make_kv_cache(num_blocks, h_kv, block_table, seqlens, dtype=torch.bfloat16,
                       scale=scale, page=page)
    records = (quantize or quantize_fp8_reference)(kv)
    del kv
    if records.dtype != torch.float8_e4m3fn or tuple(records.shape) != (num_blocks, page, h_kv,
                                                                       FP8_TOKEN_BYTES):
        raise ValueError(f"quantize returned {records.dtype} {tuple(records.shape)}")
    return poison_fp8_cache(records, block_table, seqlens)


def make_fp8_edge_rows(device="cuda", seed=0, n_random=48):
    """bf16 [n, 576] rows for conversion tests: n_random unit normal rows, then rows with an
    all-zero group, an all-zero token, huge (1e30, up to 3e38) and tiny (1e-30) magnitudes,
    one dominant value per group (most quotients land on e4m3 subnormals), exact e4m3 ties
    (amax 448 * 2^k makes the scale the power of two 2^k, so every midpoint of the e4m3 grid
    stays a midpoint after the division) and exact e4m3 grid values."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32)

    rows = [randn(n_random, HEAD_DIM)]
    r = randn(2, HEAD_DIM)
    r[0, FP8_SCALE_GROUP:2 * FP8_SCALE_GROUP] = 0.0  # group 1 all zero -> scale 1
    r[1] = 0.0  # the whole token zero, RoPE too
    rows.append(r)
    rows.append(randn(2, HEAD_DIM) * 1e30)
    rows.append(randn(2, HEAD_DIM).clamp(-3.0, 3.0) * 1e38)  # bf16's largest finite is 3.39e38
    rows.append(randn(2, HEAD_DIM) * 1e-30)
    r = randn(2, HEAD_DIM)
    for grp, big in enumerate((1e5, -3e3, 7e4, -2e5)):
        r[:, grp * FP8_SCALE_GROUP + 17 * grp + 5] = big
    rows.append(r)
    # Ties: the 126 midpoints between consecutive non-negative finite e4m3 values.
    grid = _e4m3_values("cpu")[:0x7F]  # 0 .. 448
    mids = ((grid[:-1] + grid[1:]) / 2).to(torch.float32)  # 4 significant bits: exact in bf16
    group = torch.cat([torch.tensor([E4M3_MAX]), mids, -mids[50:51]])  # 128 values, amax 448
    assert group.numel() == FP8_SCALE_GROUP
    ties = randn(2, HEAD_DIM)
    ties[0, :HEAD_DIM_V] = torch.cat([group, -group, group * 2.0**-20, -group * 2.0**20])
    ties[1, :HEAD_DIM_V] = torch.cat([group.flip(0) * 2.0**-100, group * 2.0**100, -group, group])
    rows.append(ties)
    exact = randn(1, HEAD_DIM)
    exact[0, :HEAD_DIM_V] = torch.cat([grid, -grid[1:], grid[:128], -grid[:128], grid[:128],
                                       -grid[:3]])[:HEAD_DIM_V] * 2.0**-3
    rows.append(exact)
    out = torch.cat(rows).to(torch.bfloat16)
    assert bool(torch.isfinite(out).all())
    return out.to(device)


def reference_mla(q, k_cache, block_table, seqlens, softmax_scale, causal, batch_ids=None,
                  compute_dtype=torch.float64, head_dim_v=HEAD_DIM_V, fp8_as_bf16=False):
    """Plain-torch MLA decode for the sequences in batch_ids (all by default). The page size
    is k_cache.shape[1]: sequence i's tokens are pages block_table[i, :ceil(L / page)].

    q and k_cache may be any floating dtype (bfloat16, float16, ...): both are upcast to
    compute_dtype (float32 or float64) before any arithmetic. An FP8-with-scale k_cache
    (float8_e4m3fn or uint8 [num_blocks, page, h_kv, 656], see is_fp8_cache) is dequantized
    in float64 first, page by page as it is read (dequantize_fp8_reference); with
    fp8_as_bf16=True it is instead rounded to bf16 the way the kernel rounds it for its MMAs
    (dequantize_fp8_bf16_reference).

    Returns out [n, s_q, h_q, dv] and lse [n, h_q, s_q] in compute_dtype. A query that sees no
    key (empty sequence, or causal with L < s_q) gets out = 0 and lse = +inf, as FlashMLA."""
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be float32 or float64, got {compute_dtype}")
    b, s_q, h_q, d = q.shape
    page, h_kv = k_cache.shape[1], k_cache.shape[2]
    fp8 = is_fp8_cache(k_cache)
    g = h_q // h_kv
    ids = list(range(b)) if batch_ids is None else list(batch_ids)
    dev = q.device
    out = torch.zeros(len(ids), s_q, h_q, head_dim_v, dtype=compute_dtype, device=dev)
    lse = torch.full((len(ids), h_q, s_q), math.inf, dtype=compute_dtype, device=dev)
    for row, i in enumerate(ids):
        L = int(seqlens[i])
        if L == 0:
            continue
        n = pages_for(L, page)
        pages = block_table[i, :n].long()
        if fp8:
            # uint8 view: indexing is not implemented for float8 dtypes everywhere.
            records = k_cache.view(torch.uint8)[pages]  # [n, page, h_kv, 656]
            kv = (dequantize_fp8_bf16_reference(records) if fp8_as_bf16
                  else dequantize_fp8_reference(records))
        else:
            kv = k_cache[pages]
        kv = kv.reshape(n * page, h_kv, d)[:L].to(compute_dtype)
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
    rel (the largest over the batch rows of ||out_i - ref_i|| / ||ref_i||, the absolute
    ||out_i|| where ref_i is all zero), rel_all (||out - ref|| / ||ref|| over everything),
    lse_err (max |lse - ref| / max(1, |ref|)), and the bools nan (any NaN in out/lse),
    inf_mismatch (+inf positions of lse differ, or out not 0 there). rel is per sequence
    because a long sequence's output is an average with a small norm: over the whole batch a
    short sequence's output would swamp it, and an error there would go unseen.

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
    rel_all = float(diff / denom) if float(denom) > 0 else float(diff)
    rel = rel_all
    if out.numel() > 0:
        n = out.shape[0]
        diff_i = (out - ref_out).reshape(n, -1).norm(dim=1)
        denom_i = ref_out.reshape(n, -1).norm(dim=1)
        rel_i = torch.where(denom_i > 0, diff_i / denom_i.clamp(min=torch.finfo(cd).tiny), diff_i)
        rel = float(rel_i.max())
    fin = ~ref_inf & torch.isfinite(lse)
    if bool(fin.any()):
        lse_err = float(((lse - ref_lse).abs() / ref_lse.abs().clamp(min=1.0))[fin].max())
    else:
        lse_err = 0.0
    return {"rel": rel, "rel_all": rel_all, "lse_err": lse_err, "nan": nan,
            "inf_mismatch": inf_mismatch}


def passes(errs, rel_tol=1e-2, lse_tol=1e-3):
    return (errs["rel"] < rel_tol and errs["lse_err"] < lse_tol and not errs["nan"]
            and not errs["inf_mismatch"])


def reads_exact_fp8(q, k_cache):
    """True where flash_mla runs an FP8 cache through the small-head kernel, which computes
    scores from the e4m3 values and fp32 scales themselves; elsewhere (the wide kernel) K is
    rounded to bf16 for the MMAs. Restates the launcher's rule (src/sm90/decode_launch.cuh,
    small_kernel_blocks; tests/cpp/test_gpu.cpp reads_exact_fp8): change them together. The
    launcher reads FLASHMLA_SMALL_HEADS once per process; set it before the first call."""
    _, s_q, h_q, _ = q.shape
    page, h_kv = k_cache.shape[1], k_cache.shape[2]
    return (os.environ.get("FLASHMLA_SMALL_HEADS", "1") != "0"
            and s_q * (h_q // h_kv) <= 32 and page >= 16)


def reference_errors(out, lse, q, k_cache, block_table, seqlens, softmax_scale, causal,
                     batch_ids=None, compute_dtype=torch.float64):
    """compare() of a kernel result (out / lse of the sequences in batch_ids) with
    reference_mla on the same inputs.

    For an FP8-with-scale k_cache, out (rel, +inf rows, NaN) is judged against the exactly
    dequantized cache, and lse against the oracle the kernel follows by the dispatch rule
    (reads_exact_fp8): the exact cache (small-head kernel), or the cache rounded to bf16 (wide
    kernel). The bf16 rounding of K moves each score by up to 2^-8 * softmax_scale *
    sum_d |q_d k_d| (~1e-3 for unit-variance data): noise a weighted average like out absorbs,
    but for a sequence of one key it is the whole lse error, on the order of lse_tol itself.
    Against the oracle the kernel follows the scores are as exact as with a bf16 cache, so the
    bf16 tolerances apply unchanged. errs["lse_err_other"] reports the other oracle's error
    (it grows with softmax_scale and is not a property of the kernel: not judged)."""
    ref_out, ref_lse = reference_mla(q, k_cache, block_table, seqlens, softmax_scale, causal,
                                     batch_ids=batch_ids, compute_dtype=compute_dtype)
    errs = compare(out, lse, ref_out, ref_lse)
    if is_fp8_cache(k_cache):
        del ref_out, ref_lse
        k_out, k_lse = reference_mla(q, k_cache, block_table, seqlens, softmax_scale, causal,
                                     batch_ids=batch_ids, compute_dtype=compute_dtype,
                                     fp8_as_bf16=True)
        k_errs = compare(out, lse, k_out, k_lse)
        errs["lse_err_exact"] = errs["lse_err"]
        errs["lse_err_bf16"] = k_errs["lse_err"]
        exact = reads_exact_fp8(q, k_cache)
        errs["lse_err"] = errs["lse_err_exact"] if exact else errs["lse_err_bf16"]
        errs["lse_err_other"] = errs["lse_err_bf16"] if exact else errs["lse_err_exact"]
        errs["inf_mismatch"] = errs["inf_mismatch"] or k_errs["inf_mismatch"]
    return errs
