"""pytest suite of the torch front (torch.ops.flash_mla.*) against a float64 torch reference.

Needs torch, a Hopper GPU and a built flash_mla; otherwise the whole module is skipped with
the reason (shown by `pytest -rs`)."""

import math
import sys
from pathlib import Path

import pytest

try:
    import torch
except ImportError as e:  # CPU-only CI machines have no torch
    pytest.skip(f"torch is not importable ({e})", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/mla_reference.py
import mla_reference as ref  # noqa: E402

_reason = ref.skip_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

import flash_mla  # noqa: E402
from flash_mla import flash_mla_with_kvcache, get_mla_metadata  # noqa: E402

DEFAULT_SCALE = ref.HEAD_DIM ** (-0.5)


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh but reproducible inputs per test: seed from the test's id.
    seed = sum(map(ord, request.node.nodeid)) % (2**31)
    torch.manual_seed(seed)


def _case(seqlens, s_q, h_q, h_kv, q_scale=1.0, dtype=torch.bfloat16, page=ref.PAGE,
          **table_kw):
    table, num_blocks = ref.make_block_table(seqlens, page=page, **table_kw)
    kv = ref.make_kv_cache(num_blocks, h_kv, table, seqlens, dtype=dtype, page=page)
    q = ref.make_q(len(seqlens), s_q, h_q, dtype=dtype, scale=q_scale)
    lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    return q, kv, table, lens


def _run(q, kv, table, lens, causal, softmax_scale=None, is_fp8_kvcache=False):
    h_q, h_kv, s_q = q.shape[2], kv.shape[2], q.shape[1]
    meta, splits = get_mla_metadata(lens, s_q * h_q // h_kv, h_kv)
    return flash_mla_with_kvcache(q, kv, table, lens, ref.HEAD_DIM_V, meta, splits,
                                  softmax_scale=softmax_scale, causal=causal,
                                  is_fp8_kvcache=is_fp8_kvcache)


def _assert_matches(out, lse, q, kv, table, seqlens, causal, scale=DEFAULT_SCALE):
    # Same tolerances for bf16 and fp16 (fp16 has 3 more mantissa bits: this is looser for it).
    # An FP8 kv (records [..., 656]): out against the exactly dequantized cache in float64, lse
    # against the exact cache or its bf16 rounding, the one the kernel follows by the dispatch
    # rule (ref.reference_errors, ref.reads_exact_fp8).
    b, s_q, h_q, _ = q.shape
    assert out.shape == (b, s_q, h_q, ref.HEAD_DIM_V) and out.dtype == q.dtype
    assert lse.shape == (b, h_q, s_q) and lse.dtype == torch.float32
    errs = ref.reference_errors(out, lse, q, kv, table, seqlens, scale, causal)
    assert not errs["nan"], "NaN in out/lse"
    assert not errs["inf_mismatch"], "+inf lse positions (or zero outputs) differ from reference"
    assert errs["rel"] < 1e-2, f"relative error {errs['rel']:.3g}"
    assert errs["lse_err"] < 1e-3, f"lse error {errs['lse_err']:.3g}"


def test_compare_judges_each_sequence():
    # A long sequence's output has a small norm: a 50% error there must fail the check even
    # next to a short sequence whose output dominates the batch's norm.
    ref_out = torch.zeros(2, 1, 1, ref.HEAD_DIM_V, dtype=torch.float64)
    ref_out[0] = 1.0
    ref_out[1] = 0.01
    lse = torch.zeros(2, 1, 1, dtype=torch.float64)
    out = ref_out.clone()
    out[1] *= 1.5
    errs = ref.compare(out, lse, ref_out, lse)
    assert errs["rel_all"] < 1e-2 < errs["rel"]
    assert abs(errs["rel"] - 0.5) < 1e-9
    assert not ref.passes(errs)
    # An all-zero reference row is judged by the absolute error.
    ref_out[1] = 0.0
    out[1] = 0.0
    out[1, 0, 0, 0] = 0.02
    errs = ref.compare(out, lse, ref_out, lse)
    assert abs(errs["rel"] - 0.02) < 1e-9 and not ref.passes(errs)


SEQLENS = {
    # lengths 0 and 1, page-boundary neighbours, non-multiples of 64
    "varlen": [0, 1, 63, 64, 65, 127, 200, 1000, 4097, 3],
    "b1": [777],
    "b1_long": [20000],
    # one long sequence among short ones: forces splitting it across many SM parts
    "skewed": [16384] + [5] * 15,
    "many": [(i * 2654435761) % 3001 for i in range(64)],
}


@pytest.mark.parametrize("lens_name", list(SEQLENS))
@pytest.mark.parametrize("s_q", [1, 2])
@pytest.mark.parametrize("h_kv", [1, 2])
@pytest.mark.parametrize("h_q", [16, 32, 64, 128])
def test_decode_matches_reference(h_q, h_kv, s_q, lens_name):
    seqlens = SEQLENS[lens_name]
    q, kv, table, lens = _case(seqlens, s_q, h_q, h_kv)
    out, lse = _run(q, kv, table, lens, causal=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


# FP16 (q, k_cache, out in float16; lse float32): a subset of the bf16 matrix above, the
# lengths that stress page edges and splitting.
@pytest.mark.parametrize("lens_name", ["varlen", "skewed"])
@pytest.mark.parametrize("s_q", [1, 2])
@pytest.mark.parametrize("h_kv", [1, 2])
@pytest.mark.parametrize("h_q", [16, 32, 128])
def test_fp16_matches_reference(h_q, h_kv, s_q, lens_name):
    seqlens = SEQLENS[lens_name]
    q, kv, table, lens = _case(seqlens, s_q, h_q, h_kv, dtype=torch.float16)
    out, lse = _run(q, kv, table, lens, causal=True)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


@pytest.mark.parametrize("s_q,dtype", [(1, torch.bfloat16), (2, torch.bfloat16),
                                       (4, torch.bfloat16), (2, torch.float16)],
                         ids=["1-bf16", "2-bf16", "4-bf16", "2-fp16"])
def test_non_causal_and_peaky_scores(s_q, dtype):
    # q scaled up: softmax dominated by a few keys, stressing the running max and rescaling.
    seqlens = [1, 130, 2000, 0, 64]
    q, kv, table, lens = _case(seqlens, s_q, 64, 1, q_scale=6.0, dtype=dtype)
    out, lse = _run(q, kv, table, lens, causal=False, softmax_scale=0.1)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=False, scale=0.1)


def test_causal_query_without_visible_key():
    # L = 1 < s_q = 2: query 0 sees no key -> out 0, lse +inf (FlashMLA's behaviour).
    seqlens = [1, 2, 1, 0, 3]
    q, kv, table, lens = _case(seqlens, 2, 16, 1)
    out, lse = _run(q, kv, table, lens, causal=True)
    assert torch.isposinf(lse[0, :, 0]).all() and (out[0, 0] == 0).all()
    assert torch.isfinite(lse[0, :, 1]).all()
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


def test_all_empty():
    seqlens = [0, 0, 0]
    q, kv, table, lens = _case(seqlens, 1, 32, 1)
    out, lse = _run(q, kv, table, lens, causal=True)
    assert (out == 0).all() and torch.isposinf(lse).all()


def test_default_softmax_scale():
    seqlens = [100, 300]
    q, kv, table, lens = _case(seqlens, 1, 16, 1)
    a = _run(q, kv, table, lens, causal=True)
    b = _run(q, kv, table, lens, causal=True, softmax_scale=DEFAULT_SCALE)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_strided_views():
    # q sliced out of a wider tensor, k_cache one layer of a stacked [layers, ...] cache and
    # block_table a column slice: strides must be passed through, not assumed.
    seqlens = [70, 0, 500, 129]
    b, s_q, h_q, h_kv = len(seqlens), 2, 32, 1
    table, num_blocks = ref.make_block_table(seqlens, max_blocks=12)
    wide_table = torch.full((b, 20), ref.UNUSED_PAGE_ID, dtype=torch.int32, device="cuda")
    wide_table[:, 3:15] = table
    table_view = wide_table[:, 3:15]
    stacked = torch.stack([ref.make_kv_cache(num_blocks, h_kv, table, seqlens) for _ in range(3)])
    kv = stacked[1]
    q_wide = ref.make_q(b, s_q, 2 * h_q)
    q = q_wide[:, :, ::2]
    lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    assert not q.is_contiguous() and not table_view.is_contiguous()
    out, lse = _run(q, kv, table_view, lens, causal=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


def test_metadata_shapes():
    lens = torch.tensor([5, 0, 4000, 64], dtype=torch.int32, device="cuda")
    sms = torch.cuda.get_device_properties(lens.device).multi_processor_count
    for s_q, h_q, h_kv in [(1, 16, 1), (2, 128, 1), (1, 128, 2), (2, 64, 2)]:
        rows = s_q * h_q // h_kv
        meta, splits = get_mla_metadata(lens, rows, h_kv)
        parts = max(1, sms // h_kv // math.ceil(rows / 64))
        assert parts == flash_mla._C.num_sm_parts(sms, rows, h_kv)
        assert meta.shape == (parts, 8) and meta.dtype == torch.int32
        assert splits.shape == (len(lens) + 1,) and splits.dtype == torch.int32
        s = splits.cpu()
        assert s[0] == 0 and bool((s[1:] >= s[:-1]).all())
        assert s[2] == s[1], "an empty sequence has no split"


# Cache kinds of the graph-replay test: id -> (dtype of q and of a 16-bit cache,
# is_fp8_kvcache: FP8-with-scale records from ref.make_fp8_kv_cache instead).
GRAPH_KV_KINDS = {
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "fp8": (torch.bfloat16, True),
}


@pytest.mark.parametrize("kind", list(GRAPH_KV_KINDS))
def test_cuda_graph_replay_with_new_inputs(kind):
    # An engine's step: metadata once, then every layer; captured once, replayed with new
    # lengths, new page tables and new contents written into the same buffers (FP8 records
    # are copied in as bytes).
    dtype, fp8 = GRAPH_KV_KINDS[kind]
    b, s_q, h_q, h_kv, layers = 8, 2, 64, 1, 3
    max_blocks, num_blocks = 40, 8 * 40
    rows = s_q * h_q // h_kv

    def make_kv(table, seqlens):
        if fp8:
            return ref.make_fp8_kv_cache(num_blocks, h_kv, table, seqlens)
        return ref.make_kv_cache(num_blocks, h_kv, table, seqlens, dtype=dtype)

    def inputs(seqlens):
        table, _ = ref.make_block_table(seqlens, max_blocks=max_blocks, num_blocks=num_blocks)
        kvs = [make_kv(table, seqlens) for _ in range(layers)]
        qs = [ref.make_q(b, s_q, h_q, dtype=dtype) for _ in range(layers)]
        lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
        return qs, kvs, table, lens

    first = [100, 2000, 1, 64, 0, 777, 2500, 65]
    qs, kvs, table, lens = inputs(first)

    def step():
        meta, splits = get_mla_metadata(lens, rows, h_kv)
        return [flash_mla_with_kvcache(qs[i], kvs[i], table, lens, ref.HEAD_DIM_V, meta, splits,
                                       causal=True, is_fp8_kvcache=fp8) for i in range(layers)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch recommends
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()

    for seqlens in (first, [2559, 0, 3, 1000, 64, 1, 128, 2048], [0] * 8, [1] * 8):
        new_qs, new_kvs, new_table, new_lens = inputs(seqlens)
        for i in range(layers):
            qs[i].copy_(new_qs[i])
            if fp8:
                kvs[i].view(torch.uint8).copy_(new_kvs[i].view(torch.uint8))
            else:
                kvs[i].copy_(new_kvs[i])
        table.copy_(new_table)
        lens.copy_(new_lens)
        graph.replay()
        torch.cuda.synchronize()
        for i in range(layers):
            _assert_matches(*outs[i], qs[i], kvs[i], table, seqlens, causal=True)


def test_torch_compile_fullgraph():
    seqlens = [300, 0, 1500, 65]
    s_q, h_q, h_kv = 2, 32, 1
    q, kv, table, lens = _case(seqlens, s_q, h_q, h_kv)

    @torch.compile(fullgraph=True)
    def step(q, kv, table, lens):
        meta, splits = get_mla_metadata(lens, s_q * h_q // h_kv, h_kv)
        return flash_mla_with_kvcache(q, kv, table, lens, ref.HEAD_DIM_V, meta, splits,
                                      causal=True)

    out, lse = step(q, kv, table, lens)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)
    # same shapes, new lengths: reuses the compiled graph and stays correct
    seqlens2 = [1, 64, 10, 1600]
    table2, num_blocks2 = ref.make_block_table(seqlens2, max_blocks=table.shape[1],
                                               num_blocks=kv.shape[0])
    kv2 = ref.make_kv_cache(num_blocks2, h_kv, table2, seqlens2)
    lens2 = torch.tensor(seqlens2, dtype=torch.int32, device="cuda")
    out2, lse2 = step(q, kv2, table2, lens2)
    _assert_matches(out2, lse2, q, kv2, table2, seqlens2, causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_opcheck_fake_kernels(dtype):
    # test_faketensor also checks that the fake kernel's out dtype follows q's.
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    seqlens = [10, 700]
    q, kv, table, lens = _case(seqlens, 2, 16, 1, dtype=dtype)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.flash_mla.get_mla_metadata.default, (lens, 32, 1),
                          test_utils=utils)
    meta, splits = get_mla_metadata(lens, 32, 1)
    torch.library.opcheck(torch.ops.flash_mla.fwd_kvcache_mla.default,
                          (q, kv, table, lens, 512, meta, splits, DEFAULT_SCALE, True),
                          test_utils=utils)


# ---------------------------------------------------------------------------------------
# KV page sizes (kvcache.shape[1]): powers of two 1 .. 256; block_table has ceil(L / page)
# entries per sequence (then UNUSED_PAGE_ID), pages shuffled, every non-token slot NaN.

PAGES = [1, 16, 32, 64, 128, 256]
SQ_HQ = [(1, 16), (2, 16), (2, 128)]  # (s_q, h_q): 16, 32 (two row blocks) and 256 rows


@pytest.mark.parametrize("s_q,h_q", SQ_HQ, ids=[f"sq{s}-h{h}" for s, h in SQ_HQ])
@pytest.mark.parametrize("lens_name", ["varlen", "skewed", "b1_long"])
@pytest.mark.parametrize("page", PAGES)
def test_page_sizes_match_reference(page, lens_name, s_q, h_q):
    seqlens = SEQLENS[lens_name]
    q, kv, table, lens = _case(seqlens, s_q, h_q, 1, page=page)
    assert kv.shape[1] == page and table.shape[1] > max(ref.pages_for(L, page) for L in seqlens)
    out, lse = _run(q, kv, table, lens, causal=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


@pytest.mark.parametrize("s_q,h_q", SQ_HQ, ids=[f"sq{s}-h{h}" for s, h in SQ_HQ])
@pytest.mark.parametrize("page", [1, 16])
def test_page_sizes_fp16(page, s_q, h_q):
    seqlens = SEQLENS["varlen"]
    q, kv, table, lens = _case(seqlens, s_q, h_q, 1, dtype=torch.float16, page=page)
    out, lse = _run(q, kv, table, lens, causal=True)
    assert out.dtype == torch.float16
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


@pytest.mark.parametrize("page", [2**k for k in range(9)])
def test_every_power_of_two_page(page):
    # Small and quick: each supported page size once, lengths around small page multiples.
    seqlens = [0, 1, 2, 3, 5, 8, 9, 31, 33, 300]
    q, kv, table, lens = _case(seqlens, 2, 32, 1, page=page)
    out, lse = _run(q, kv, table, lens, causal=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


# ---------------------------------------------------------------------------------------
# Query tokens per sequence, head counts, softmax scales.

# Short lengths, several below 16 so that causal queries see no key for the larger s_q.
SHORT_VARLEN = [0, 1, 2, 7, 15, 16, 17, 64, 65, 300, 1100]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("h_q", [16, 128])
@pytest.mark.parametrize("s_q", [1, 3, 4, 8, 16])
def test_seqlen_q_matches_reference(s_q, h_q, causal):
    seqlens = SHORT_VARLEN
    q, kv, table, lens = _case(seqlens, s_q, h_q, 1)
    out, lse = _run(q, kv, table, lens, causal=causal)
    want_inf = ref.expected_inf_lse(seqlens, s_q, h_q, causal)
    assert torch.equal(torch.isposinf(lse), want_inf)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=causal)


HEADS = [(1, 1), (2, 1), (8, 1), (24, 1), (8, 2)]  # (h_q, h_kv)


@pytest.mark.parametrize("s_q", [1, 2])
@pytest.mark.parametrize("h_q,h_kv", HEADS, ids=[f"h{q}-kv{k}" for q, k in HEADS])
def test_head_counts_match_reference(h_q, h_kv, s_q):
    seqlens = SEQLENS["varlen"]
    q, kv, table, lens = _case(seqlens, s_q, h_q, h_kv)
    out, lse = _run(q, kv, table, lens, causal=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


@pytest.mark.parametrize("scale", [0.01, 1.0, 3.0])
def test_softmax_scale_matches_reference(scale):
    # 0.01: nearly uniform softmax; 1.0 and 3.0: scores spread over hundreds, one key dominates.
    seqlens = [1, 130, 2000, 0, 64, 777]
    q, kv, table, lens = _case(seqlens, 2, 64, 1)
    out, lse = _run(q, kv, table, lens, causal=False, softmax_scale=scale)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=False, scale=scale)


# ---------------------------------------------------------------------------------------
# Bad arguments: ValueError whose message names the argument (or the optional third item of a
# BAD_ARGS entry: a regex the message must contain instead).

def _good_args():
    seqlens = [100, 5]
    q, kv, table, lens = _case(seqlens, 1, 16, 1)
    meta, splits = get_mla_metadata(lens, 16, 1)
    return dict(q=q, k_cache=kv, block_table=table, cache_seqlens=lens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits)


def _bad_page(page):
    # k_cache with `page` tokens per page (same number of pages, zeros): an unsupported page
    # size (not a power of two in 1 .. 256); the message must say page_block_size.
    def corrupt(a):
        kv = a["k_cache"]
        return kv.new_zeros(kv.shape[0], page, *kv.shape[2:])
    return ("k_cache", corrupt, "page_block_size")


BAD_ARGS = {
    "q dtype": ("q", lambda a: a["q"].float()),
    "q rank": ("q", lambda a: a["q"][0]),
    "q head_dim": ("q", lambda a: a["q"][..., :512]),
    "q device": ("q", lambda a: a["q"].cpu()),
    "k_cache dtype": ("k_cache", lambda a: a["k_cache"].half()),  # bf16 q, fp16 cache
    "k_cache float32": ("k_cache", lambda a: a["k_cache"].float()),
    "k_cache head_dim": ("k_cache", lambda a: a["k_cache"][..., :512]),
    **{f"k_cache page_block_size {n}": _bad_page(n) for n in (0, 3, 48, 512)},
    "k_cache device": ("k_cache", lambda a: a["k_cache"].cpu()),
    "block_table dtype": ("block_table", lambda a: a["block_table"].long()),
    "block_table batch": ("block_table", lambda a: a["block_table"][:1]),
    "cache_seqlens dtype": ("cache_seqlens", lambda a: a["cache_seqlens"].long()),
    "cache_seqlens device": ("cache_seqlens", lambda a: a["cache_seqlens"].cpu()),
    "head_dim_v": ("head_dim_v", lambda a: 576),
    "metadata shape": ("tile_scheduler_metadata", lambda a: a["tile_scheduler_metadata"][:, :4]),
    "num_splits shape": ("num_splits", lambda a: a["num_splits"][:-1]),
    "q no heads": ("q", lambda a: a["q"][:, :, :0]),
    "q no tokens": ("q", lambda a: a["q"][:, :0]),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_argument_raises_value_error(case):
    name, corrupt, *pattern = BAD_ARGS[case]
    args = _good_args()
    args[name] = corrupt(args)
    with pytest.raises(ValueError, match=pattern[0] if pattern else rf"\b{name}\b"):
        flash_mla_with_kvcache(**args, causal=True)


def test_fp16_q_with_bf16_k_cache_raises_value_error():
    # Each dtype is accepted alone; mixing them is not (the message names k_cache).
    args = _good_args()
    assert args["k_cache"].dtype == torch.bfloat16
    args["q"] = args["q"].half()
    with pytest.raises(ValueError, match=r"\bk_cache\b"):
        flash_mla_with_kvcache(**args, causal=True)


def test_fp16_good_args_accepted():
    # The bad-argument cases above start from bf16; the same call in fp16 must run.
    args = _good_args()
    args["q"], args["k_cache"] = args["q"].half(), args["k_cache"].half()
    out, lse = flash_mla_with_kvcache(**args, causal=True)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32


def test_all_cpu_inputs_raise_value_error():
    args = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in _good_args().items()}
    with pytest.raises(ValueError, match=r"\bq\b"):
        flash_mla_with_kvcache(**args)


def test_heads_not_divisible():
    args = _good_args()
    args["q"] = ref.make_q(2, 1, 3)
    args["k_cache"] = args["k_cache"].repeat(1, 1, 2, 1)
    with pytest.raises(ValueError, match="k_cache"):
        flash_mla_with_kvcache(**args)


@pytest.mark.parametrize("bad", ["dtype", "device", "rank"])
def test_metadata_bad_seqlens(bad):
    lens = torch.tensor([3, 4], dtype=torch.int32, device="cuda")
    lens = {"dtype": lens.long(), "device": lens.cpu(), "rank": lens[None]}[bad]
    with pytest.raises(ValueError, match="cache_seqlens"):
        get_mla_metadata(lens, 16, 1)


# ---------------------------------------------------------------------------------------
# Metadata that does not belong to the call (a broken contract the host cannot see without a
# sync): never a hang, a fault or a write out of bounds; sequences that cannot be merged are NaN.

def test_metadata_of_longer_lengths_does_not_hang():
    # Planned for 64000 tokens, run on 100: the parts past the end must walk nothing (the
    # walk used to run past the sequence, with negative tile rows and a TMA byte count that
    # never arrives). The answer is unspecified; the call returns and the GPU stays usable.
    for h_q in (16, 128):
        q, kv, table, lens = _case([64000], 1, h_q, 1)
        meta, splits = get_mla_metadata(lens, h_q, 1)
        flash_mla_with_kvcache(q, kv, table, torch.full_like(lens, 100), ref.HEAD_DIM_V, meta,
                               splits, causal=True)
        torch.cuda.synchronize()
    out, lse = _run(q, kv, table, lens, causal=True)  # a correct call afterwards
    _assert_matches(out, lse, q, kv, table, [64000], causal=True)


# Batch 2-3 runs the column-chunked combine (many pieces a sequence), 24 the one-chunk one.
@pytest.mark.parametrize("batch", [2, 24])
@pytest.mark.parametrize("h_q", [16, 128])
def test_metadata_of_an_empty_sequence_gives_nan(h_q, batch):
    # Sequence 0 was empty when planned (no pieces in num_splits) and has 50 tokens now: its
    # output is NaN (not zeros that look like an empty sequence); the others are unaffected.
    rest = [100] * (batch - 1)
    q, kv, table, lens = _case([50] + rest, 1, h_q, 1)
    meta, splits = get_mla_metadata(torch.tensor([0] + rest, dtype=torch.int32, device="cuda"), h_q, 1)
    out, lse = flash_mla_with_kvcache(q, kv, table, lens, ref.HEAD_DIM_V, meta, splits, causal=True)
    assert torch.isnan(out[0]).all() and torch.isnan(lse[0]).all()
    _assert_matches(out[1:], lse[1:], q[1:], kv, table[1:], rest, causal=True)


@pytest.mark.parametrize("batch", [3, 24])
@pytest.mark.parametrize("page", [1, 64])
@pytest.mark.parametrize("h_q", [16, 128])
def test_lengths_outside_the_table_give_nan(h_q, page, batch):
    # Sequence 1 claims more tokens than its block_table row holds (the row's last entries
    # would be read past the row), sequence 2 a negative length: both NaN, computed from the
    # table's pages only; the others are unaffected. The metadata matches these lengths. The
    # row's unused tail holds ref.UNUSED_PAGE_ID, which the page-1 gather must not follow.
    rest = [2000 + 37 * i for i in range(batch - 3)]
    q, kv, table, lens = _case([300, 5000, 70] + rest, 1, h_q, 1, page=page)
    capacity = table.shape[1] * page
    bad = torch.tensor([300, capacity + 1, -7] + rest, dtype=torch.int32, device="cuda")
    meta, splits = get_mla_metadata(bad, h_q, 1)
    out, lse = flash_mla_with_kvcache(q, kv, table, bad, ref.HEAD_DIM_V, meta, splits, causal=True)
    assert torch.isnan(out[1:3]).all() and torch.isnan(lse[1:3]).all()
    keep = [0] + list(range(3, batch))
    _assert_matches(out[keep], lse[keep], q[keep], kv, table[keep], [300] + rest, causal=True)


@pytest.mark.parametrize("page", [1, 64])
def test_invalid_page_id_does_not_fault(page):
    # A page id out of range inside a live sequence: its answer is wrong (TMA reads zeros, the
    # gather of small pages reads page 0), but nothing faults and the other sequences match.
    q, kv, table, lens = _case([300, 200], 1, 16, 1, page=page)
    table[0, 1] = -5
    out, lse = _run(q, kv, table, lens, causal=True)
    torch.cuda.synchronize()
    _assert_matches(out[1:], lse[1:], q[1:], kv, table[1:], [200], causal=True)


@pytest.mark.parametrize("kind", ["bf16-h16", "bf16-h32", "bf16-h128", "fp8-h16", "fp8-h32"])
def test_garbage_metadata_does_not_hang(kind):
    # Metadata rows that no plan writes (negative starts, INT_MIN / INT_MAX fields): the walks
    # clamp them, so nothing is read or written out of bounds and no barrier waits forever. The
    # answer is unspecified; the call returns and a correct call afterwards matches.
    fmt, h = kind.split("-h")
    h_q, fp8 = int(h), fmt == "fp8"
    seqlens = [3000, 100, 0, 1500]
    q, kv, table, lens = _case(seqlens, 1, h_q, 1)
    cache = flash_mla.quantize_kv_fp8(kv) if fp8 else kv
    meta, splits = get_mla_metadata(lens, h_q, 1)
    lo, hi = -2**31, 2**31 - 1
    bad = [[-1, 0, 0, 1, 0], [0, -1, 0, 1, 0], [0, lo, 0, 1, 0], [lo, lo, hi, hi, lo],
           [1, hi, 1, hi, -5], [hi, 0, lo, 0, hi]]
    garbage = meta.clone()
    for r, row in enumerate(bad):
        garbage[r % garbage.shape[0], :len(row)] = torch.tensor(row, dtype=torch.int32)
    flash_mla_with_kvcache(q, cache, table, lens, ref.HEAD_DIM_V, garbage, splits, causal=True,
                           is_fp8_kvcache=fp8)
    torch.cuda.synchronize()
    if not fp8:
        out, lse = _run(q, kv, table, lens, causal=True)
        _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


def test_num_splits_of_another_call_stays_in_bounds():
    # num_splits planned for 132 parts with metadata (and workspace) for 66: piece indices
    # point past the workspace. Nothing is written or read out of bounds (a later correct call
    # still matches), and the unmergeable sequences come out as NaN.
    seqlens = [4000] * 8
    q, kv, table, lens = _case(seqlens, 1, 128, 1)
    meta, _ = get_mla_metadata(lens, 128, 1)
    _, splits = get_mla_metadata(lens, 16, 1)
    if int(splits[-1]) <= len(seqlens) + meta.shape[0]:
        pytest.skip("this GPU's two plans both fit the workspace")
    out, lse = flash_mla_with_kvcache(q, kv, table, lens, ref.HEAD_DIM_V, meta, splits, causal=True)
    torch.cuda.synchronize()
    assert torch.isnan(out[-1]).all()  # the last sequence's pieces lie past the workspace
    out, lse = _run(q, kv, table, lens, causal=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


# ---------------------------------------------------------------------------------------
# FP8 KV cache (is_fp8_kvcache=True): 656-byte "FP8 with scale" records, q and out bf16.
# Caches come from ref.make_fp8_kv_cache: the bf16 random cache quantized by the pure-torch
# oracle (ref.quantize_fp8_reference), every record that is not a live token set to 0xFF bytes
# (NaN as e4m3, as scale and as RoPE). The decode reference dequantizes in float64.

def _differences(got, want, limit=8):
    """(count, first few (index, got, want)) of elements whose bits differ; got / want of the
    same element size (1 or 2 bytes), compared as integers on the CPU."""
    as_int = {1: torch.uint8, 2: torch.int16}
    g = got.detach().cpu().contiguous()
    w = want.detach().cpu().contiguous()
    assert g.shape == w.shape, f"shape {tuple(g.shape)} != {tuple(w.shape)}"
    g, w = g.view(as_int[g.element_size()]), w.view(as_int[w.element_size()])
    bad = (g != w).nonzero()
    first = [(tuple(i.tolist()), int(g[tuple(i)]), int(w[tuple(i)])) for i in bad[:limit]]
    return bad.shape[0], first


def _random_fp8_records(n, seed):
    """uint8 [n, 656] records of random bytes that are all valid values: every e4m3 code but
    the NaNs (so -0 and subnormals too), positive float32 scales over ~2^-12 .. 2^12, finite
    bf16 RoPE values."""
    g = torch.Generator().manual_seed(seed)
    rec = torch.randint(0, 256, (n, ref.FP8_TOKEN_BYTES), dtype=torch.uint8, generator=g)
    codes = rec[:, :ref.HEAD_DIM_V]
    codes[(codes & 0x7F) == 0x7F] = 0x00
    scales = torch.exp(torch.randn(n, ref.FP8_GROUPS, generator=g) * 3.0).to(torch.float32)
    rec[:, ref.FP8_SCALE_OFFSET:ref.FP8_ROPE_OFFSET] = scales.view(torch.uint8)
    rope = torch.randn(n, ref.HEAD_DIM - ref.HEAD_DIM_V, generator=g).to(torch.bfloat16)
    rec[:, ref.FP8_ROPE_OFFSET:] = rope.view(torch.uint8)
    return rec


def test_fp8_quantize_matches_reference_bit_for_bit():
    # Random rows plus an all-zero group, an all-zero token, huge / tiny magnitudes, subnormal
    # e4m3 results and exact e4m3 ties (ref.make_fp8_edge_rows). No code may differ: torch's
    # float8_e4m3fn cast and the hardware conversion both round to nearest even, ties included
    # (checked on the CPU against the host twin src/reference/fp8_cache_host.cpp, bit for bit).
    rows = ref.make_fp8_edge_rows("cuda")
    n = rows.shape[0]
    want = ref.quantize_fp8_reference(rows.cpu())
    kv = rows.reshape(n, 1, 1, ref.HEAD_DIM)  # leading dims pass through
    got = flash_mla.quantize_kv_fp8(kv)
    assert got.dtype == torch.float8_e4m3fn and got.shape == (n, 1, 1, ref.FP8_TOKEN_BYTES)
    count, first = _differences(got.reshape(n, -1), want)
    assert count == 0, f"{count} bytes differ from the reference, first (index, got, want): {first}"
    # A row stride wider than 576 (a view into a padded buffer) reads the same rows.
    wide = torch.full((n, 640), float("nan"), dtype=torch.bfloat16, device="cuda")
    wide[:, :ref.HEAD_DIM] = rows
    count, first = _differences(flash_mla.quantize_kv_fp8(wide[:, :ref.HEAD_DIM]), want)
    assert count == 0, f"strided input: {count} bytes differ, first: {first}"
    # A view strided in its last dim (every other element of a [n, 1152] buffer) is read by
    # value, not as contiguous bytes.
    pairs = torch.full((n, 2 * ref.HEAD_DIM), float("nan"), dtype=torch.bfloat16, device="cuda")
    pairs[:, ::2] = rows
    count, first = _differences(flash_mla.quantize_kv_fp8(pairs[:, ::2]), want)
    assert count == 0, f"last-dim stride 2: {count} bytes differ, first: {first}"
    # Row pitches the core cannot stride over (580: not whole 16-byte chunks), a view starting
    # 8 bytes into its buffer, and one row of a pitched buffer: copied or passed as they are,
    # never refused.
    odd = torch.full((n, 580), float("nan"), dtype=torch.bfloat16, device="cuda")
    odd[:, :ref.HEAD_DIM] = rows
    shifted = torch.full((n, 584), float("nan"), dtype=torch.bfloat16, device="cuda")
    shifted[:, 4:4 + ref.HEAD_DIM] = rows
    for name, view in (("pitch 580", odd[:, :ref.HEAD_DIM]), ("offset 8 bytes", shifted[:, 4:4 + ref.HEAD_DIM])):
        count, first = _differences(flash_mla.quantize_kv_fp8(view), want)
        assert count == 0, f"{name}: {count} bytes differ, first: {first}"
    count, first = _differences(flash_mla.quantize_kv_fp8(wide[3:4, :ref.HEAD_DIM]), want[3:4])
    assert count == 0, f"one row of a pitched buffer: {count} bytes differ, first: {first}"
    # The oracle run on the GPU (as make_fp8_kv_cache does for the decode tests) agrees too.
    count, first = _differences(ref.quantize_fp8_reference(rows), want)
    assert count == 0, f"reference on cuda vs cpu: {count} bytes differ, first: {first}"


def test_fp8_quantize_scales_and_rope():
    # Spot checks of the format itself, independent of the reference's code path.
    rows = ref.make_fp8_edge_rows("cuda")
    rec = flash_mla.quantize_kv_fp8(rows).view(torch.uint8).cpu()
    scales = rec[:, ref.FP8_SCALE_OFFSET:ref.FP8_ROPE_OFFSET].contiguous().view(torch.float32)
    latent = rows.cpu().float()[:, :ref.HEAD_DIM_V].reshape(-1, ref.FP8_GROUPS, ref.FP8_SCALE_GROUP)
    amax = latent.abs().amax(-1)
    want = torch.where(amax == 0, torch.ones_like(amax), amax / torch.full_like(amax, 448.0))
    assert torch.equal(scales, want)
    assert bool((scales[amax == 0] == 1.0).all()) and bool((amax == 0).any())
    rope = rec[:, ref.FP8_ROPE_OFFSET:].contiguous().view(torch.bfloat16)
    assert torch.equal(rope.view(torch.int16), rows.cpu()[:, ref.HEAD_DIM_V:].view(torch.int16))
    # Every group's largest magnitude lands on +-448 (code 0x7E / 0xFE).
    codes = rec[:, :ref.HEAD_DIM_V].reshape(-1, ref.FP8_GROUPS, ref.FP8_SCALE_GROUP)
    top = (codes & 0x7F).amax(-1)
    assert bool((top[amax > 0] == 0x7E).all())


def test_fp8_dequantize_matches_reference():
    # dequantize_kv_fp8 = fp32 product e4m3 * scale rounded to bf16; the reference computes the
    # product exactly (float64), rounds it to fp32 and then to bf16, which is the same thing.
    rows = ref.make_fp8_edge_rows("cuda")
    records = flash_mla.quantize_kv_fp8(rows)
    got = flash_mla.dequantize_kv_fp8(records)
    assert got.dtype == torch.bfloat16 and got.shape == rows.shape
    want = ref.dequantize_fp8_bf16_reference(records.cpu())
    count, first = _differences(got, want)
    assert count == 0, f"{count} values differ, first (index, got bits, want bits): {first}"
    # uint8 records are taken as well, with the same result.
    count, _ = _differences(flash_mla.dequantize_kv_fp8(records.view(torch.uint8)), want)
    assert count == 0
    # Random records: every non-NaN code (incl. -0 and subnormals) under random scales.
    rec = _random_fp8_records(4096, seed=11)
    got = flash_mla.dequantize_kv_fp8(rec.cuda().reshape(64, 64, 1, ref.FP8_TOKEN_BYTES))
    count, first = _differences(got.reshape(4096, ref.HEAD_DIM),
                                ref.dequantize_fp8_bf16_reference(rec))
    assert count == 0, f"random records: {count} values differ, first: {first}"
    # Round trip of normal random rows: e4m3 keeps ~4 significant bits.
    x = rows[:48].double()
    back = flash_mla.dequantize_kv_fp8(flash_mla.quantize_kv_fp8(rows[:48])).double()
    assert float((back - x).norm() / x.norm()) < 0.05
    assert torch.equal(back[:, ref.HEAD_DIM_V:], x[:, ref.HEAD_DIM_V:])


def _fp8_case(seqlens, s_q, h_q, h_kv, page=ref.PAGE, q_scale=1.0, **table_kw):
    table, num_blocks = ref.make_block_table(seqlens, page=page, **table_kw)
    kv = ref.make_fp8_kv_cache(num_blocks, h_kv, table, seqlens, page=page)
    q = ref.make_q(len(seqlens), s_q, h_q, scale=q_scale)  # bf16
    lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    return q, kv, table, lens


def test_fp8_test_cache_is_poisoned_outside_live_tokens():
    # The premise of the FP8 decode tests: every record a kernel must not read is NaN in all
    # three parts (latent, scale, RoPE), every live one finite.
    seqlens = [0, 1, 63, 64, 65, 200]
    for page in (1, 16, 64, 256):
        q, kv, table, lens = _fp8_case(seqlens, 1, 16, 2, page=page)
        valid = ref.valid_slot_mask(table, seqlens, kv.shape[0], page)
        values = ref.dequantize_fp8_reference(kv).reshape(kv.shape[0] * page, -1)
        assert bool(torch.isfinite(values[valid]).all())
        dead = values[~valid].reshape(-1, 2, ref.HEAD_DIM)
        assert dead.shape[0] > 0 and bool(torch.isnan(dead).all())
        assert bool((kv.view(torch.uint8).reshape(kv.shape[0] * page, -1)[~valid] == 0xFF).all())


FP8_CASES = [(64, "varlen"), (64, "skewed"), (64, "b1_long"),
             (1, "varlen"), (16, "varlen"), (256, "varlen")]  # (page, lens_name)


@pytest.mark.parametrize("s_q,h_q", SQ_HQ, ids=[f"sq{s}-h{h}" for s, h in SQ_HQ])
@pytest.mark.parametrize("page,lens_name", FP8_CASES,
                         ids=[f"page{p}-{n}" for p, n in FP8_CASES])
def test_fp8_decode_matches_reference(page, lens_name, s_q, h_q):
    # out: relative error < 1e-2 against the float64 reference on the exactly dequantized
    # cache; lse against it or its bf16 rounding, whichever the kernel follows (_assert_matches).
    seqlens = SEQLENS[lens_name]
    q, kv, table, lens = _fp8_case(seqlens, s_q, h_q, 1, page=page)
    assert kv.dtype == torch.float8_e4m3fn and kv.shape[1:] == (page, 1, ref.FP8_TOKEN_BYTES)
    out, lse = _run(q, kv, table, lens, causal=True, is_fp8_kvcache=True)
    assert out.dtype == torch.bfloat16
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


def test_fp8_non_causal_and_peaky_scores():
    # q scaled up, softmax_scale 0.1: scores spread over tens, a few keys dominate. The kernel's
    # bf16 rounding of K moves scores by ~0.015 here, so out sits ~5e-3 from the exact
    # reference (measured on a CPU model of the kernel), under the 1e-2 requirement.
    seqlens = [1, 130, 2000, 0, 64]
    q, kv, table, lens = _fp8_case(seqlens, 2, 64, 1, q_scale=4.0)
    out, lse = _run(q, kv, table, lens, causal=False, softmax_scale=0.1, is_fp8_kvcache=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=False, scale=0.1)


def test_fp8_two_kv_heads():
    # Records of the two kv heads interleave: k_head_stride 656, k_row_stride 1312 bytes.
    seqlens = SEQLENS["varlen"]
    q, kv, table, lens = _fp8_case(seqlens, 2, 32, 2)
    out, lse = _run(q, kv, table, lens, causal=True, is_fp8_kvcache=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


def test_fp8_uint8_records_give_the_same_result():
    seqlens = [300, 0, 65, 1]
    q, kv, table, lens = _fp8_case(seqlens, 2, 16, 1)
    a = _run(q, kv, table, lens, causal=True, is_fp8_kvcache=True)
    b = _run(q, kv.view(torch.uint8), table, lens, causal=True, is_fp8_kvcache=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fp8_strided_records():
    # Each record padded to 672 bytes (0xFF padding), and the cache one layer of a stacked
    # [layers, ...] buffer: strides in bytes, not assumed dense.
    seqlens = [70, 0, 500, 129]
    b, s_q, h_q, h_kv = len(seqlens), 2, 32, 1
    table, num_blocks = ref.make_block_table(seqlens)
    kv = ref.make_fp8_kv_cache(num_blocks, h_kv, table, seqlens)
    stacked = torch.full((3, num_blocks, ref.PAGE, h_kv, 672), ref.FP8_POISON_BYTE,
                         dtype=torch.uint8, device="cuda")
    stacked[1, ..., :ref.FP8_TOKEN_BYTES] = kv.view(torch.uint8)
    view = stacked[1, ..., :ref.FP8_TOKEN_BYTES].view(torch.float8_e4m3fn)
    assert not view.is_contiguous() and view.stride(2) == 672
    q = ref.make_q(b, s_q, h_q)
    lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    out, lse = _run(q, view, table, lens, causal=True, is_fp8_kvcache=True)
    _assert_matches(out, lse, q, kv, table, seqlens, causal=True)


# Bad arguments with FP8: (argument, corrupt, is_fp8_kvcache[, regex the ValueError message
# must contain; default: the argument's name]).

def _good_fp8_args():
    seqlens = [100, 5]
    q, kv, table, lens = _fp8_case(seqlens, 1, 16, 1)
    meta, splits = get_mla_metadata(lens, 16, 1)
    return dict(q=q, k_cache=kv, block_table=table, cache_seqlens=lens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits)


def _fp8_padded(width):
    # The records as a view into rows of `width` bytes: k_head_stride = width.
    def corrupt(a):
        kv = a["k_cache"].view(torch.uint8)
        wide = torch.zeros(*kv.shape[:-1], width, dtype=torch.uint8, device=kv.device)
        wide[..., :ref.FP8_TOKEN_BYTES] = kv
        return wide[..., :ref.FP8_TOKEN_BYTES]
    return corrupt


def _fp8_other_page(page):
    def corrupt(a):
        kv = a["k_cache"]
        return torch.zeros(kv.shape[0], page, *kv.shape[2:], dtype=torch.uint8, device=kv.device)
    return corrupt


FP8_BAD_ARGS = {
    "q fp16": ("q", lambda a: a["q"].half(), True),
    "q float32": ("q", lambda a: a["q"].float(), True),
    "k_cache bf16 576": ("k_cache", lambda a: ref.dequantize_fp8_bf16_reference(a["k_cache"]),
                         True),
    "k_cache float8 576": ("k_cache", lambda a: a["k_cache"][..., :ref.HEAD_DIM], True),
    "k_cache uint8 576": ("k_cache", lambda a: a["k_cache"].view(torch.uint8)[..., :ref.HEAD_DIM],
                          True),
    "k_cache int8": ("k_cache", lambda a: a["k_cache"].view(torch.int8), True),
    "k_cache page 3": ("k_cache", _fp8_other_page(3), True, "page_block_size"),
    # 664 is a multiple of 8 (enough for 16-bit caches) but not of 16 bytes
    "k_cache head stride 664": ("k_cache", _fp8_padded(664), True, "k_head_stride"),
    "k_cache fp8 without is_fp8_kvcache": ("k_cache", lambda a: a["k_cache"], False),
    "k_cache uint8 without is_fp8_kvcache": ("k_cache", lambda a: a["k_cache"].view(torch.uint8),
                                             False),
}


@pytest.mark.parametrize("case", list(FP8_BAD_ARGS))
def test_fp8_bad_argument_raises_value_error(case):
    name, corrupt, is_fp8, *pattern = FP8_BAD_ARGS[case]
    args = _good_fp8_args()
    args[name] = corrupt(args)
    with pytest.raises(ValueError, match=pattern[0] if pattern else rf"\b{name}\b"):
        flash_mla_with_kvcache(**args, causal=True, is_fp8_kvcache=is_fp8)


def test_fp8_good_args_accepted():
    # The cases above start from these arguments; unchanged they must run.
    out, lse = flash_mla_with_kvcache(**_good_fp8_args(), causal=True, is_fp8_kvcache=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert not bool(out.isnan().any())


CONVERSION_BAD_ARGS = {
    "quantize fp16": ("quantize_kv_fp8", lambda: torch.zeros(4, 576, dtype=torch.float16), "kv"),
    "quantize float32": ("quantize_kv_fp8", lambda: torch.zeros(4, 576), "kv"),
    "quantize last dim 512": ("quantize_kv_fp8",
                              lambda: torch.zeros(4, 512, dtype=torch.bfloat16), "kv"),
    "dequantize bf16": ("dequantize_kv_fp8", lambda: torch.zeros(4, 656, dtype=torch.bfloat16),
                        "kv_fp8"),
    "dequantize last dim 576": ("dequantize_kv_fp8",
                                lambda: torch.zeros(4, 576, dtype=torch.uint8), "kv_fp8"),
}


@pytest.mark.parametrize("case", list(CONVERSION_BAD_ARGS))
def test_fp8_conversion_bad_argument_raises_value_error(case):
    fn, make, name = CONVERSION_BAD_ARGS[case]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        getattr(flash_mla, fn)(make().cuda())


def test_fp8_opcheck_fake_kernels():
    # The fake kernels of the FP8 paths (uint8 records: some generic ops used by opcheck have
    # no float8 implementation).
    if not hasattr(torch.library, "opcheck"):
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    utils = ("test_schema", "test_faketensor")
    seqlens = [10, 700]
    q, kv, table, lens = _fp8_case(seqlens, 2, 16, 1)
    meta, splits = get_mla_metadata(lens, 32, 1)
    torch.library.opcheck(torch.ops.flash_mla.fwd_kvcache_mla.default,
                          (q, kv.view(torch.uint8), table, lens, 512, meta, splits,
                           DEFAULT_SCALE, True, True),
                          test_utils=utils)
    rows = ref.make_q(1, 4, 8)[0]  # bf16 [4, 8, 576]
    torch.library.opcheck(torch.ops.flash_mla.quantize_kv_fp8.default, (rows,), test_utils=utils)
    records = flash_mla.quantize_kv_fp8(rows).view(torch.uint8)
    torch.library.opcheck(torch.ops.flash_mla.dequantize_kv_fp8.default, (records,),
                          test_utils=utils)
