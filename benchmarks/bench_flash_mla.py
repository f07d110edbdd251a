#!/usr/bin/env python3
"""Table (and plot) of flash_mla's decode matrix against the hardware floor.

Floor of a config = max(bytes / 2968e9 B/s, flops / 789e12 FLOP/s): the H100/H200 measured copy
bandwidth and bf16 dense matmul rate, i.e. the time no kernel can beat. "% floor" is
floor / achieved.

    python benchmarks/bench_flash_mla.py --from-json rows.json   # from tests/test_flash_mla.py --json
    python benchmarks/bench_flash_mla.py [--quick]               # runs the matrix itself (GPU)

Writes a PNG (achieved vs floor us per config) when matplotlib is available.
"""

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

PEAK_BYTES_PER_S = 2968e9
PEAK_FLOPS_PER_S = 789e12
ROOT = Path(__file__).resolve().parents[1]


def floor_us(row):
    return max(row["bytes"] / PEAK_BYTES_PER_S, row["flops"] / PEAK_FLOPS_PER_S) * 1e6


def load_matrix_script():
    path = ROOT / "tests" / "test_flash_mla.py"
    spec = importlib.util.spec_from_file_location("test_flash_mla", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def label(row):
    return (f"s_q={row['s_q']} sk={row['mean_sk'] // 1024}k h={row['h_q']}"
            f"{' var' if row['varlen'] else ''}")


def print_table(rows):
    fmt = "{:>3} {:>7} {:>4} {:>6} {:>9} {:>9} {:>7} {:>8} {:>7} {:>5}"
    print(fmt.format("s_q", "mean_sk", "h_q", "varlen", "us", "floor_us", "%floor", "TFLOPS",
                     "TB/s", "ok"))
    for r in rows:
        if "bytes" not in r or not math.isfinite(r["us"]):
            print(fmt.format(r["s_q"], r["mean_sk"], r["h_q"], "varied" if r["varlen"] else "fixed",
                             "-", "-", "-", "-", "-", "FAIL"))
            continue
        f = floor_us(r)
        print(fmt.format(r["s_q"], r["mean_sk"], r["h_q"], "varied" if r["varlen"] else "fixed",
                         f"{r['us']:.1f}", f"{f:.1f}", f"{100 * f / r['us']:.0f}%",
                         f"{r['tflops']:.0f}", f"{r['gbps'] / 1e3:.2f}",
                         "PASS" if r["passed"] else "FAIL"))
    timed = [r for r in rows if "bytes" in r and math.isfinite(r["us"])]
    if timed:
        geo = math.exp(sum(math.log(floor_us(r) / r["us"]) for r in timed) / len(timed))
        print(f"geomean % of floor over {len(timed)} configs: {100 * geo:.1f}%")


def plot(rows, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no plot")
        return
    rows = [r for r in rows if "bytes" in r and math.isfinite(r["us"])]
    if not rows:
        return
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(rows)), 5))
    ax.bar(x, [r["us"] for r in rows], color="tab:blue", label="achieved")
    ax.scatter(x, [floor_us(r) for r in rows], color="tab:red", marker="_", s=200, zorder=3,
               label="floor (max of HBM, tensor-core time)")
    ax.set_xticks(list(x))
    ax.set_xticklabels([label(r) for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("µs per call")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from-json", metavar="PATH", help="rows written by test_flash_mla.py --json")
    ap.add_argument("--quick", action="store_true", help="when running the matrix: few configs")
    ap.add_argument("--png", default=str(ROOT / "out" / "bench_flash_mla.png"),
                    help="plot path (default: out/, which git ignores)")
    args = ap.parse_args(argv)

    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        mod = load_matrix_script()
        reason = mod.skip_reason()
        if reason:
            print(f"SKIP: {reason}")
            return 0
        rows, info = mod.run_matrix(quick=args.quick)  # prints rows as they finish
        data = dict(info, rows=rows)
    print(f"device: {data.get('device', '?')}  (floor: {PEAK_BYTES_PER_S / 1e9:.0f} GB/s, "
          f"{PEAK_FLOPS_PER_S / 1e12:.0f} TFLOP/s)")
    print_table(data["rows"])
    plot(data["rows"], args.png, f"flash_mla decode on {data.get('device', '?')}, "
         f"b={data.get('batch', 128)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
