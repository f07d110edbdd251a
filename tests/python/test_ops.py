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


def _case(seqlens, s_q, h_q, h_kv, q_scale=1.0, dtype=torch.bfloat16, **table_kw):
    table, num_blocks = ref.make_block_table(seqlens, **table_kw)
    kv = ref.make_kv_cache(num_blocks, h_kv, table, seqlens, dtype=dtype)
    q = ref.make_q(len(seqlens), s_q, h_q, dtype=dtype, scale=q_scale)
    lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
    return q, kv, table, lens


def _run(q, kv, table, lens, causal, softmax_scale=None):
    h_q, h_kv, s_q = q.shape[2], kv.shape[2], q.shape[1]
    meta, splits = get_mla_metadata(lens, s_q * h_q // h_kv, h_kv)
    return flash_mla_with_kvcache(q, kv, table, lens, ref.HEAD_DIM_V, meta, splits,
                                  softmax_scale=softmax_scale, causal=causal)


def _assert_matches(out, lse, q, kv, table, seqlens, causal, scale=DEFAULT_SCALE):
    # Same tolerances for bf16 and fp16 (fp16 has 3 more mantissa bits: this is looser for it).
    b, s_q, h_q, _ = q.shape
    assert out.shape == (b, s_q, h_q, ref.HEAD_DIM_V) and out.dtype == q.dtype
    assert lse.shape == (b, h_q, s_q) and lse.dtype == torch.float32
    ref_out, ref_lse = ref.reference_mla(q, kv, table, seqlens, scale, causal)
    errs = ref.compare(out, lse, ref_out, ref_lse)
    assert not errs["nan"], "NaN in out/lse"
    assert not errs["inf_mismatch"], "+inf lse positions (or zero outputs) differ from reference"
    assert errs["rel"] < 1e-2, f"relative error {errs['rel']:.3g}"
    assert errs["lse_err"] < 1e-3, f"lse error {errs['lse_err']:.3g}"


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
@pytest.mark.parametrize("h_q", [16, 128])
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_graph_replay_with_new_inputs(dtype):
    # An engine's step: metadata once, then every layer; captured once, replayed with new
    # lengths, new page tables and new contents written into the same buffers.
    b, s_q, h_q, h_kv, layers = 8, 2, 64, 1, 3
    max_blocks, num_blocks = 40, 8 * 40
    rows = s_q * h_q // h_kv

    def inputs(seqlens):
        table, _ = ref.make_block_table(seqlens, max_blocks=max_blocks, num_blocks=num_blocks)
        kvs = [ref.make_kv_cache(num_blocks, h_kv, table, seqlens, dtype=dtype)
               for _ in range(layers)]
        qs = [ref.make_q(b, s_q, h_q, dtype=dtype) for _ in range(layers)]
        lens = torch.tensor(seqlens, dtype=torch.int32, device="cuda")
        return qs, kvs, table, lens

    first = [100, 2000, 1, 64, 0, 777, 2500, 65]
    qs, kvs, table, lens = inputs(first)

    def step():
        meta, splits = get_mla_metadata(lens, rows, h_kv)
        return [flash_mla_with_kvcache(qs[i], kvs[i], table, lens, ref.HEAD_DIM_V, meta, splits,
                                       causal=True) for i in range(layers)]

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
# Bad arguments: ValueError whose message names the argument.

def _good_args():
    seqlens = [100, 5]
    q, kv, table, lens = _case(seqlens, 1, 16, 1)
    meta, splits = get_mla_metadata(lens, 16, 1)
    return dict(q=q, k_cache=kv, block_table=table, cache_seqlens=lens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits)


BAD_ARGS = {
    "q dtype": ("q", lambda a: a["q"].float()),
    "q rank": ("q", lambda a: a["q"][0]),
    "q head_dim": ("q", lambda a: a["q"][..., :512]),
    "q device": ("q", lambda a: a["q"].cpu()),
    "k_cache dtype": ("k_cache", lambda a: a["k_cache"].half()),  # bf16 q, fp16 cache
    "k_cache float32": ("k_cache", lambda a: a["k_cache"].float()),
    "k_cache head_dim": ("k_cache", lambda a: a["k_cache"][..., :512]),
    "k_cache page size": ("k_cache", lambda a: a["k_cache"].reshape(-1, 32, *a["k_cache"].shape[2:])),
    "k_cache device": ("k_cache", lambda a: a["k_cache"].cpu()),
    "block_table dtype": ("block_table", lambda a: a["block_table"].long()),
    "block_table batch": ("block_table", lambda a: a["block_table"][:1]),
    "cache_seqlens dtype": ("cache_seqlens", lambda a: a["cache_seqlens"].long()),
    "cache_seqlens device": ("cache_seqlens", lambda a: a["cache_seqlens"].cpu()),
    "head_dim_v": ("head_dim_v", lambda a: 576),
    "metadata shape": ("tile_scheduler_metadata", lambda a: a["tile_scheduler_metadata"][:, :4]),
    "num_splits shape": ("num_splits", lambda a: a["num_splits"][:-1]),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_argument_raises_value_error(case):
    name, corrupt = BAD_ARGS[case]
    args = _good_args()
    args[name] = corrupt(args)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
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
