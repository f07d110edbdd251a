# A/B table of bench_decode JSON files named <prefix>_<tag>_r<rep>.json: one row per config,
# one column per tag and repeat (decode_us, or the field named by a third argument); a fourth
# argument "mean" gives one column per tag, the mean over its repeats.
import json, sys, glob, re
R, prefix = sys.argv[1], sys.argv[2]
field = sys.argv[3] if len(sys.argv) > 3 else "decode_us"
mean = len(sys.argv) > 4 and sys.argv[4] == "mean"
runs = {}
for f in sorted(glob.glob(f"{R}/{prefix}_*_r*.json")):
    m = re.match(rf".*/{prefix}_(.+)_r(\d+)\.json", f)
    tag = m.group(1).removeprefix("bench_") + ("" if mean else "." + m.group(2))
    try:
        res = json.load(open(f))["results"]
    except Exception as e:
        print(f, e); continue
    for r in res:
        k = "%s %s b%d h%d sq%d sk%d p%d" % (r["regime"][:12], r["kv"], r["b"], r["h_q"], r["s_q"], r["sum_sk"] // r["b"], r["page"])
        if r.get(field) is not None:  # older binaries lack newer fields (host_us)
            runs.setdefault(k, {}).setdefault(tag, []).append(r[field])
tags = sorted({t for v in runs.values() for t in v})
print(field, "\n" + "config".ljust(44), " ".join(t[:10].rjust(10) for t in tags))
for k, v in runs.items():
    print(k[:44].ljust(44), " ".join(("%10.2f" % (sum(v[t]) / len(v[t]))) if t in v else "         -" for t in tags))
