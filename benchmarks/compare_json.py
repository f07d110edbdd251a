"""Side-by-side decode times of bench_decode JSON files (same configs), e.g. two kernel variants.

  python3 benchmarks/compare_json.py [--across FIELD,...] A.json B.json [C.json ...]
Prints one row per config of A: decode us in each file, and A's TFLOPS / GB/s / % of floor.
--across page (or kv, ...) matches configs that differ in those fields (e.g. one matrix run per
page size) and adds each file's time over A's, with the largest and the mean ratio per file.
"""
import json
import sys

FIELDS = ("regime", "b", "s_k", "h_q", "s_q", "page", "kv")


def main(args):
    across = set()
    if args and args[0] == "--across":
        across, args = set(args[1].split(",")), args[2:]
    key = lambda r: tuple(r.get(f) for f in FIELDS if f not in across)
    files = [{key(r): r for r in json.load(open(p))["results"]} for p in args]
    names = " ".join(f"{p.split('/')[-1][:14]:>14}" for p in args)
    print(f"{'config':44} {names}   TFLOPS   GB/s %floor")
    ratios = [[] for _ in files]
    for k, r in files[0].items():
        cols = []
        for i, f in enumerate(files):
            if k not in f:
                cols.append(f"{'-':>14}")
                continue
            t = f[k]["decode_us"]
            if across and i > 0:
                ratios[i].append(t / r["decode_us"])
                cols.append(f"{t:8.1f} {t / r['decode_us']:5.3f}")
            else:
                cols.append(f"{t:14.1f}")
        cfg = f"{r['regime'][:14]:14} b{r['b']:<4} sk{r['s_k']:<6} h{r['h_q']:<4} sq{r['s_q']}"
        print(f"{cfg:44} {' '.join(cols)} {r['tflops']:8.1f} {r['gbps']:6.0f} {r['pct_of_floor']:6.1f}")
    for i in range(1, len(files)):
        if ratios[i]:
            print(f"{args[i]}: time / {args[0]}: max {max(ratios[i]):.3f}, mean "
                  f"{sum(ratios[i]) / len(ratios[i]):.3f} over {len(ratios[i])} configs")


if __name__ == "__main__":
    main(sys.argv[1:])
