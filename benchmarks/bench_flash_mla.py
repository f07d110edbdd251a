#!/usr/bin/env python3
"""Table and plot of flash_mla decode timings against the hardware floor.

Floor of a config = max(bytes / 2968e9 B/s, flops / 789e12 FLOP/s): the H100/H200 measured copy
bandwidth and bf16 dense matmul rate, i.e. the time no kernel can beat. "% floor" is
floor / achieved. Latency target (regime rows) = 1.3 * floor + 5 us.

    python3 benchmarks/bench_flash_mla.py --from-json bench.json [--from-json matrix.json] --png out.png
    python3 benchmarks/bench_flash_mla.py [--quick] [--page-size N]   # runs the Python matrix (GPU)

--from-json takes either JSON (repeatable): the C++ benchmark's (build/bench_decode --json, rows
under "results", with "regime" names, metadata / decode / schedule+decode us and FlashMLA's
figures) or tests/test_flash_mla.py --json (rows under "rows"). The PNG has two panels:
  left:  one bar per config (decode us, log scale) with the floor (red tick), the latency
         target (green dashed, regime rows), schedule+decode for one layer (open circle) and
         upstream FlashMLA's figure (black star) where known;
  right: achieved vs floor us (log-log) with the lines y = floor and y = 1.3 * floor + 5.
When the rows have more than one KV page size ("page", 64 where a row does not say), labels end
in " pg<page>".
"""

import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

# The H100 ceilings measured for the project; FLASHMLA_PEAK_GBPS / FLASHMLA_PEAK_TFLOPS replace
# them with the card's own (build/bench_ceilings), as bench_decode does.
PEAK_BYTES_PER_S = float(os.environ.get("FLASHMLA_PEAK_GBPS") or 2968) * 1e9
PEAK_FLOPS_PER_S = float(os.environ.get("FLASHMLA_PEAK_TFLOPS") or 789) * 1e12
TARGET_FACTOR, TARGET_SLACK_US = 1.3, 5.0
ROOT = Path(__file__).resolve().parents[1]


def floor_us(row):
    return max(row["bytes"] / PEAK_BYTES_PER_S, row["flops"] / PEAK_FLOPS_PER_S) * 1e6


def target_us(floor):
    return TARGET_FACTOR * floor + TARGET_SLACK_US


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def load_matrix_script():
    path = ROOT / "tests" / "test_flash_mla.py"
    spec = importlib.util.spec_from_file_location("test_flash_mla", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- Normalized entries -------------------------------------------------------------------
# One dict per config: source ("c++" / "py"), group (regime rows: "regime"; others: "matrix"),
# label, us (decode), floor, target (regime rows), step_us, meta_us, flashmla_us, ok, note.

def from_cpp_row(r):
    regime = r.get("regime", "matrix")
    if regime in ("matrix", "config"):
        lens = f"<={r['max_sk'] // 1024}k" if r.get("varlen") and "max_sk" in r else f"{r['s_k'] // 1024}k"
        label = (f"{'cfg ' if regime == 'config' else ''}b{r['b']} sk{lens} h{r['h_q']} sq{r['s_q']}"
                 f"{'' if r.get('h_kv', 1) == 1 else ' kv' + str(r['h_kv'])}")
        group = "matrix"
    else:
        label, group = regime, "regime"
    e = dict(source="c++", group=group, regime=regime, label=label, us=r.get("decode_us", math.nan),
             step_us=r.get("sched_decode_us"), meta_us=r.get("metadata_us"),
             flashmla_us=r.get("flashmla_us"), error=r.get("error"), b=r["b"], h_q=r["h_q"],
             s_q=r["s_q"], sum_sk=r.get("sum_sk", r["b"] * r["s_k"]), page=r.get("page", 64))
    if "bytes" in r and "flops" in r:
        e["floor"] = floor_us(r)
    elif "floor_us" in r:
        e["floor"] = r["floor_us"]
    else:
        e["floor"] = math.nan
    e["target"] = r.get("target_us", target_us(e["floor"])) if finite(e["floor"]) else math.nan
    return e


def from_py_row(r):
    label = (f"py sq{r['s_q']} sk{r['mean_sk'] // 1024}k h{r['h_q']}"
             f"{' var' if r.get('varlen') else ''}")
    ok = "bytes" in r and finite(r.get("us"))
    fl = floor_us(r) if ok else math.nan
    return dict(source="py", group="matrix", regime="matrix", label=label,
                us=r["us"] if ok else math.nan, step_us=None, meta_us=None, flashmla_us=None,
                error=None if r.get("passed", True) else "; ".join(r.get("problems", [])) or "FAIL",
                b=r.get("b"), h_q=r["h_q"], s_q=r["s_q"], sum_sk=r.get("sum_sk"), floor=fl,
                target=target_us(fl) if ok else math.nan, page=r.get("page", 64))


def load_entries(path):
    data = json.loads(Path(path).read_text())
    device = data.get("device") or "?"
    if "results" in data:  # C++ bench_decode
        if data.get("skipped"):
            print(f"{path}: skipped by bench_decode: {data['skipped']}")
        return device, [from_cpp_row(r) for r in data["results"]]
    if "rows" in data:  # tests/test_flash_mla.py --json
        return device, [from_py_row(r) for r in data["rows"]]
    raise SystemExit(f"{path}: neither bench_decode JSON ('results') nor matrix JSON ('rows')")


def label_pages(entries):
    """Appends " pg<page>" to every label when the entries have more than one page size."""
    if len({e["page"] for e in entries}) > 1:
        for e in entries:
            e["label"] += f" pg{e['page']}"


def fmt(x, spec=".1f"):
    return format(x, spec) if finite(x) else "-"


def print_table(entries):
    head = "{:<3} {:<30} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>4} {:>5} {:>8} {:>6}"
    print(head.format("src", "config", "meta_us", "dec_us", "step_us", "floor", "%floor", "target",
                      "met", "met+m", "flashmla", "vs_fm"))
    for e in entries:
        if e["error"] and not finite(e["us"]):
            print(f"{e['source']:<3} {e['label']:<30} FAILED: {e['error']}")
            continue
        timed = finite(e["us"]) and finite(e["floor"])
        met = ("yes" if e["us"] <= e["target"] else "NO") if timed else "-"
        met_m = ("yes" if e["step_us"] <= e["target"] else "NO") if timed and finite(e["step_us"]) else "-"
        fm = e["flashmla_us"]
        print(head.format(e["source"], e["label"][:30], fmt(e["meta_us"], ".2f"), fmt(e["us"]),
                          fmt(e["step_us"]), fmt(e["floor"]),
                          f"{100 * e['floor'] / e['us']:.0f}%" if timed else "-", fmt(e["target"]),
                          met, met_m, fmt(fm), f"{e['us'] / fm:.2f}x" if finite(fm) and timed else "-")
              + (f"  ({e['error']})" if e["error"] else ""))
    for src in ("c++", "py"):
        for group in ("regime", "matrix"):
            timed = [e for e in entries if e["source"] == src and e["group"] == group
                     and finite(e["us"]) and finite(e["floor"]) and e["us"] > 0]
            if not timed:
                continue
            geo = math.exp(sum(math.log(e["floor"] / e["us"]) for e in timed) / len(timed))
            met = sum(e["us"] <= e["target"] for e in timed)
            print(f"{src} {group}: geomean % of floor {100 * geo:.1f}% over {len(timed)} configs, "
                  f"latency target met by {met}/{len(timed)}")


# --- Plot ---------------------------------------------------------------------------------

def plot(entries, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no plot")
        return
    # Regime rows first (the latency questions), then the matrices.
    order = {("c++", "regime"): 0, ("c++", "matrix"): 1, ("py", "matrix"): 2, ("py", "regime"): 3}
    rows = sorted((e for e in entries if finite(e["us"]) and finite(e["floor"]) and e["us"] > 0),
                  key=lambda e: order[(e["source"], e["group"])])
    if not rows:
        print("nothing timed: no plot")
        return
    colors = {("c++", "regime"): "tab:blue", ("c++", "matrix"): "tab:cyan",
              ("py", "matrix"): "tab:purple", ("py", "regime"): "tab:purple"}
    names = {("c++", "regime"): "decode, regime (C++)", ("c++", "matrix"): "decode, matrix (C++)",
             ("py", "matrix"): "decode, matrix (Python)", ("py", "regime"): "decode (Python)"}

    n = len(rows)
    bars_in = max(3.5, 0.28 * n)  # inches: the bar panel grows with the configs, the scatter not
    fig, (ax, sc) = plt.subplots(1, 2, figsize=(bars_in + 7.0, 6.2),
                                 gridspec_kw=dict(width_ratios=[bars_in, 5.0]))
    x = list(range(n))
    seen = set()
    for i, e in enumerate(rows):
        key = (e["source"], e["group"])
        ax.bar(i, e["us"], width=0.75, color=colors[key], label=None if key in seen else names[key])
        seen.add(key)
    ax.scatter(x, [e["floor"] for e in rows], color="tab:red", marker="_", s=260, linewidths=2.2,
               zorder=3, label="floor (max of HBM, tensor-core time)")
    reg = [i for i, e in enumerate(rows) if e["group"] == "regime"]
    if reg:
        ax.hlines([rows[i]["target"] for i in reg], [i - 0.45 for i in reg], [i + 0.45 for i in reg],
                  colors="tab:green", linestyles="--", linewidths=1.8, zorder=4,
                  label=f"latency target {TARGET_FACTOR:g}·floor + {TARGET_SLACK_US:g} µs")
        for i in reg:  # decode us above everything drawn at that config
            e = rows[i]
            top = max(v for v in (e["us"], e["step_us"], e["flashmla_us"], e["target"]) if finite(v))
            ax.annotate(f"{e['us']:.1f}", (i, top), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7, color="tab:green" if e["us"] <= e["target"] else "black")
    step = [i for i, e in enumerate(rows) if finite(e["step_us"])]
    if step:
        ax.scatter(step, [rows[i]["step_us"] for i in step], facecolors="none", edgecolors="0.25",
                   marker="o", s=22, zorder=5, label="metadata + decode, one layer")
    fm = [i for i, e in enumerate(rows) if finite(e["flashmla_us"])]
    if fm:
        ax.scatter(fm, [rows[i]["flashmla_us"] for i in fm], color="black", marker="*", s=90, zorder=6,
                   label="FlashMLA (upstream, same H100)")
    # Group separators.
    for i in range(1, n):
        if order[(rows[i]["source"], rows[i]["group"])] != order[(rows[i - 1]["source"], rows[i - 1]["group"])]:
            ax.axvline(i - 0.5, color="0.6", linewidth=0.8)
    ax.set_xticks(x)
    reg_no = {i: k + 1 for k, i in enumerate(reg)}
    ax.set_xticklabels([f"{reg_no[i]}: {e['label']}" if i in reg_no else e["label"]
                        for i, e in enumerate(rows)], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_yscale("log")
    ax.set_ylabel("µs per call")
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=3, frameon=False)

    # Achieved vs floor, log-log.
    fl = [e["floor"] for e in rows]
    lo = min(min(fl), min(e["us"] for e in rows)) / 1.6
    hi = max(max(fl), max(e["us"] for e in rows), max((e["flashmla_us"] or 0) for e in rows)) * 1.6
    grid = [lo * (hi / lo) ** (k / 100) for k in range(101)]
    sc.plot(grid, grid, color="tab:red", linewidth=1.2, label="achieved = floor")
    sc.plot(grid, [target_us(g) for g in grid], color="tab:green", linestyle="--", linewidth=1.4,
            label=f"{TARGET_FACTOR:g}·floor + {TARGET_SLACK_US:g} µs")
    for key in order:
        pts = [e for e in rows if (e["source"], e["group"]) == key]
        if pts:
            sc.scatter([e["floor"] for e in pts], [e["us"] for e in pts], color=colors[key], s=22,
                       zorder=3, label=names[key])
    # Regime points carry their number from the bar panel's labels ("1: b1_8k_h16"); a grey line
    # joins each to FlashMLA's figure for it.
    for k, e in enumerate(r for r in rows if r["group"] == "regime"):
        sc.annotate(str(k + 1), (e["floor"], e["us"]), textcoords="offset points", xytext=(4, 2),
                    fontsize=7, fontweight="bold", color=colors[(e["source"], e["group"])])
        if finite(e["flashmla_us"]):
            sc.plot([e["floor"], e["floor"]], [e["us"], e["flashmla_us"]], color="0.6",
                    linewidth=0.7, zorder=2)
    if fm:
        sc.scatter([rows[i]["floor"] for i in fm], [rows[i]["flashmla_us"] for i in fm], color="black",
                   marker="*", s=70, zorder=4, label="FlashMLA")
    sc.set_xscale("log")
    sc.set_yscale("log")
    sc.set_xlim(lo, hi)
    sc.set_ylim(lo, hi)
    sc.set_xlabel("floor µs")
    sc.set_ylabel("achieved µs (decode)")
    sc.grid(which="both", alpha=0.25)
    sc.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from-json", metavar="PATH", action="append", default=[],
                    help="bench_decode --json or test_flash_mla.py --json output (repeatable)")
    ap.add_argument("--quick", action="store_true", help="when running the matrix: few configs")
    ap.add_argument("--page-size", type=int, default=64, metavar="N",
                    help="when running the matrix: KV page size in tokens (default 64)")
    ap.add_argument("--png", default=str(ROOT / "out" / "bench_flash_mla.png"),
                    help="plot path (default: out/, which git ignores)")
    args = ap.parse_args(argv)

    entries, devices = [], []
    if args.from_json:
        for path in args.from_json:
            device, rows = load_entries(path)
            devices.append(device)
            entries += rows
    else:
        mod = load_matrix_script()
        reason = mod.skip_reason()
        if reason:
            print(f"SKIP: {reason}")
            return 0
        rows, info = mod.run_matrix(quick=args.quick, page=args.page_size)  # prints rows
        devices.append(info.get("device", "?"))
        entries = [from_py_row(r) for r in rows]
    device = ", ".join(sorted(set(d for d in devices if d != "?")) or {"?"})
    print(f"device: {device}  (floor: {PEAK_BYTES_PER_S / 1e9:.0f} GB/s, "
          f"{PEAK_FLOPS_PER_S / 1e12:.0f} TFLOP/s; target {TARGET_FACTOR:g} * floor + {TARGET_SLACK_US:g} us)")
    if not entries:
        print("no rows")
        return 0
    label_pages(entries)
    print_table(entries)
    plot(entries, args.png, f"flash_mla decode on {device}: achieved vs floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
