"""Side-by-side decode times of bench_decode JSON files (same configs), e.g. two kernel variants.

  python3 benchmarks/compare_json.py A.json B.json [C.json ...]
Prints one row per config of A: decode us in each file, and A's TFLOPS / GB/s / % of floor.
"""
import json
import sys


def key(r):
    return (r.get("regime"), r["b"], r["s_k"], r["h_q"], r["s_q"], r.get("page"), r.get("kv"))


def main(paths):
    files = [{key(r): r for r in json.load(open(p))["results"]} for p in paths]
    names = " ".join(f"{p.split('/')[-1][:14]:>14}" for p in paths)
    print(f"{'config':44} {names}   TFLOPS   GB/s %floor")
    for k, r in files[0].items():
        cols = " ".join(f"{f[k]['decode_us']:14.1f}" if k in f else f"{'-':>14}" for f in files)
        cfg = f"{r['regime'][:14]:14} b{r['b']:<4} sk{r['s_k']:<6} h{r['h_q']:<4} sq{r['s_q']}"
        print(f"{cfg:44} {cols} {r['tflops']:8.1f} {r['gbps']:6.0f} {r['pct_of_floor']:6.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
