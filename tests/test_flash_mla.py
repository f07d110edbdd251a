#!/usr/bin/env python3
"""FlashMLA's standard decode matrix: correctness and speed of flash_mla on one GPU.

b = 128, h_kv = 1, causal; mean s_k in {4096, 8192, 16384} x h_q in {16, 32, 64, 128} x
s_q in {1, 2} x {fixed, varied} lengths = 48 configs. Varied lengths are normal around the mean
(std mean/2) clamped to [1, 2*mean], from a printed seed.

Per config: random q / paged KV (--dtype bf16 or fp16, also out's dtype; lse is fp32; pages of
--page-size tokens, a power of two 1 .. 256, default 64) behind a random permuted block
table, with every slot that no sequence owns set to NaN; a float32 torch reference on 8
sequences (all heads) plus global checks (no NaN in out/lse, +inf lse exactly where a query
sees no key); then the call is timed as a CUDA graph (metadata computed once outside it, as an
engine does per step), median of repeated replays with CUDA events, rotating input sets when
the KV would fit in L2.

--fp8: the KV cache of every config is FP8 with scale (656-byte records made from the random
bf16 cache by flash_mla.quantize_kv_fp8, every record no sequence owns set to 0xFF bytes, i.e.
NaN), decoded with is_fp8_kvcache=True (q and out bf16); the reference runs on the dequantized
cache (out against the exact float64 dequantization, lse against it or the cache rounded to
bf16, the one the kernel follows by the dispatch rule: see mla_reference.reference_errors), and the KV bytes of the GB/s figure,
of "bytes" and of the L2 rotation are 656 per token and kv head instead of 1152. JSON rows say
"kv": "fp8" (else the dtype, "bf16" / "fp16").

    python tests/test_flash_mla.py [--quick] [--dtype {bf16,fp16}] [--fp8] [--page-size N]
                                   [--json PATH] [--seed N] [--batch B]

Exit code 1 if any config fails. Without torch, a GPU or the built extension it prints
"SKIP: <reason>" and exits 0.
"""

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

MEAN_SK = (4096, 8192, 16384)
H_Q = (16, 32, 64, 128)
S_Q = (1, 2)
QUICK = [  # (mean_sk, h_q, s_q, varlen)
    (4096, 128, 1, False),
    (4096, 64, 2, True),
    (8192, 16, 1, True),
    (16384, 128, 2, False),
]
L2_FALLBACK = 50 * 2**20
DTYPE_NAMES = ("bf16", "fp16")  # torch dtypes in mla_reference.DTYPES (resolved after import)
ROW_FMT = "{:>4} {:>4} {:>6} {:>4} {:>4} {:>6} {:>9} {:>8} {:>8} {:>10} {:>5}"


def skip_reason():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"torch is not importable ({e})"
    sys.path.insert(0, str(HERE))
    import mla_reference

    return mla_reference.skip_reason()


def config_list(quick):
    if quick:
        return [dict(mean_sk=m, h_q=h, s_q=s, varlen=v) for m, h, s, v in QUICK]
    return [dict(mean_sk=m, h_q=h, s_q=s, varlen=v)
            for m in MEAN_SK for h in H_Q for s in S_Q for v in (False, True)]


def kv_name(dtype, fp8):
    """What the KV cache holds, as the JSON rows' "kv" says it: "fp8", else the dtype's name."""
    return "fp8" if fp8 else dtype


def seqlens_for(b, mean, varlen, rng):
    if not varlen:
        return [mean] * b
    return [min(max(int(rng.gauss(mean, mean / 2)), 1), 2 * mean) for _ in range(b)]


def run_config(cfg, b, h_kv, seed, repeats, dtype="bf16", page=64, fp8=False):
    import torch

    import flash_mla
    import mla_reference as ref

    s_q, h_q, mean = cfg["s_q"], cfg["h_q"], cfg["mean_sk"]
    tdtype = ref.as_dtype(dtype)
    if fp8 and tdtype != torch.bfloat16:
        raise ValueError(f"an FP8 KV cache needs bf16 q / out, got dtype {dtype}")
    elem = torch.empty((), dtype=tdtype).element_size()
    # bytes of one token's KV (per kv head) as the kernel reads them
    token_bytes = ref.FP8_TOKEN_BYTES if fp8 else ref.HEAD_DIM * elem
    rng = random.Random(seed)
    torch.manual_seed(seed)
    lens = seqlens_for(b, mean, cfg["varlen"], rng)
    total = sum(lens)
    kv_bytes = total * h_kv * token_bytes
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = getattr(props, "L2_cache_size", 0) or L2_FALLBACK
    # Inputs that fit in L2 would time cache hits, not HBM reads: rotate enough sets.
    n_sets = 1 if kv_bytes >= 4 * l2 else min(8, math.ceil(4 * l2 / max(kv_bytes, 1)))

    sets = []
    for _ in range(n_sets):
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        table, num_blocks = ref.make_block_table(lens, generator=gen, page=page)
        if fp8:
            kv = ref.make_fp8_kv_cache(num_blocks, h_kv, table, lens, page=page,
                                       quantize=flash_mla.quantize_kv_fp8)
        else:
            kv = ref.make_kv_cache(num_blocks, h_kv, table, lens, dtype=tdtype, page=page)
        sets.append((ref.make_q(b, s_q, h_q, dtype=tdtype), kv, table))
    seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    meta, splits = flash_mla.get_mla_metadata(seqlens, s_q * h_q // h_kv, h_kv)

    def call(i):
        q, kv, table = sets[i % n_sets]
        return flash_mla.flash_mla_with_kvcache(q, kv, table, seqlens, ref.HEAD_DIM_V, meta,
                                                splits, causal=True, is_fp8_kvcache=fp8)

    # Correctness (set 0): reference on a subset, global NaN / +inf checks on everything.
    out, lse = call(0)
    torch.cuda.synchronize()
    if out.dtype != tdtype or lse.dtype != torch.float32:
        raise TypeError(f"out {out.dtype} / lse {lse.dtype}, expected {tdtype} / float32")
    ids = sorted(set(rng.sample(range(b), min(6, b)) + [lens.index(min(lens)),
                                                         lens.index(max(lens))]))
    q, kv, table = sets[0]
    # For an FP8 cache: out against the exactly dequantized cache, lse against it or its bf16
    # rounding, the one the kernel follows by the dispatch rule (ref.reference_errors).
    errs = ref.reference_errors(out[ids], lse[ids], q, kv, table, lens, ref.HEAD_DIM ** -0.5, True,
                                batch_ids=ids, compute_dtype=torch.float32)
    nan_any = bool(out.isnan().any() or lse.isnan().any())
    want_inf = ref.expected_inf_lse(lens, s_q, h_q, causal=True)
    inf_ok = torch.equal(torch.isposinf(lse), want_inf) and not bool(torch.isneginf(lse).any())

    # Timing: one graph of several calls, so the launch of each replay is amortized.
    calls = n_sets * math.ceil(8 / n_sets)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(n_sets):
            call(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        first = call(0)
        for i in range(1, calls):
            call(i)
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)  # ms -> us per call
    us = statistics.median(times)
    # The graph's first call reran set 0: it must agree with the eager result.
    graph_errs = ref.compare(first[0], first[1], out.double(), lse.double())
    graph_ok = ref.passes(graph_errs, rel_tol=1e-3, lse_tol=1e-5)

    flops = 2 * s_q * total * h_q * (ref.HEAD_DIM + ref.HEAD_DIM_V)
    # KV as stored (656 bytes per FP8 record), q read and out written in q's dtype.
    nbytes = total * h_kv * token_bytes + b * s_q * h_q * (ref.HEAD_DIM + ref.HEAD_DIM_V) * elem
    ok = ref.passes(errs) and not nan_any and inf_ok and graph_ok
    problems = [name for name, bad in (("subset", not ref.passes(errs)), ("nan", nan_any),
                                       ("inf", not inf_ok), ("graph", not graph_ok)) if bad]
    sets.clear()  # free this config's inputs and graph pool before the next one
    del graph, first, out, lse
    torch.cuda.empty_cache()
    return dict(b=b, s_q=s_q, mean_sk=mean, h_q=h_q, h_kv=h_kv, varlen=cfg["varlen"], seed=seed,
                dtype=dtype, kv=kv_name(dtype, fp8), page=page, sum_sk=total, n_sets=n_sets, us=us,
                tflops=flops / us / 1e6, gbps=nbytes / us / 1e3, flops=flops, bytes=nbytes,
                rel_err=errs["rel"], lse_err=errs["lse_err"], passed=ok, problems=problems)


def run_matrix(quick=False, seed=0, batch=128, h_kv=1, repeats=10, log=print, dtype="bf16",
               page=64, fp8=False):
    """Runs the matrix (assumes skip_reason() is None); returns (rows, info). dtype: "bf16" or
    "fp16", the element type of q, the KV cache and out; page: KV page size (tokens per page);
    fp8: FP8-with-scale KV cache (q and out bf16, so dtype must be "bf16")."""
    import torch

    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {dtype!r}")
    if fp8 and dtype != "bf16":
        raise ValueError(f"an FP8 KV cache needs dtype bf16 (q and out), got {dtype!r}")
    kv = kv_name(dtype, fp8)
    info = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, seed=seed,
                batch=batch, h_kv=h_kv, dtype=dtype, kv=kv, page=page)
    log(f"device: {info['device']}  torch {info['torch']}  dtype {dtype}  kv {kv}  page {page}  "
        f"b={batch} h_kv={h_kv}  seed {seed} (config i uses seed*1000+i)")
    log(ROW_FMT.format("b", "s_q", "mean_sk", "h_q", "page", "varlen", "us", "TFLOPS", "GB/s",
                           "max_rel_err", "ok"))
    rows = []
    for idx, cfg in enumerate(config_list(quick)):
        cfg_seed = seed * 1000 + idx  # one seed per config, printed in the JSON
        try:
            r = run_config(cfg, batch, h_kv, cfg_seed, repeats, dtype, page, fp8)
        except Exception as e:  # a crash fails this config, the others still run
            r = dict(b=batch, s_q=cfg["s_q"], mean_sk=cfg["mean_sk"], h_q=cfg["h_q"], h_kv=h_kv,
                     varlen=cfg["varlen"], seed=cfg_seed, dtype=dtype, kv=kv, page=page,
                     us=float("nan"), tflops=float("nan"), gbps=float("nan"), rel_err=float("nan"),
                     lse_err=float("nan"), passed=False, problems=[f"{type(e).__name__}: {e}"])
            torch.cuda.empty_cache()
        rows.append(r)
        log(ROW_FMT.format(r["b"], r["s_q"], r["mean_sk"], r["h_q"], r["page"],
                               "varied" if r["varlen"] else "fixed", f"{r['us']:.1f}",
                               f"{r['tflops']:.1f}", f"{r['gbps']:.0f}", f"{r['rel_err']:.2e}",
                               "PASS" if r["passed"] else "FAIL")
            + ("" if r["passed"] else "  " + "; ".join(r["problems"])))
    return rows, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="run a few configs only")
    ap.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16",
                    help="element type of q, the KV cache and out (lse is always fp32)")
    ap.add_argument("--fp8", action="store_true",
                    help="FP8-with-scale KV cache (656-byte records, is_fp8_kvcache=True); "
                         "needs --dtype bf16")
    ap.add_argument("--page-size", type=int, default=64, metavar="N",
                    help="KV cache page size in tokens, a power of two 1 .. 256 (default 64)")
    ap.add_argument("--json", metavar="PATH", help="write all rows as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--h-kv", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10, help="timed graph replays per config")
    args = ap.parse_args(argv)
    if args.fp8 and args.dtype != "bf16":
        ap.error("--fp8 needs --dtype bf16 (q and out are bf16 with an FP8 KV cache)")

    reason = skip_reason()
    if reason:
        print(f"SKIP: {reason}")
        return 0
    t0 = time.time()
    rows, info = run_matrix(args.quick, args.seed, args.batch, args.h_kv, args.repeats,
                            dtype=args.dtype, page=args.page_size, fp8=args.fp8)
    failed = sum(not r["passed"] for r in rows)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(info, rows=rows), indent=1))
        print(f"wrote {args.json}")
    print(f"{time.time() - t0:.0f} s")
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
