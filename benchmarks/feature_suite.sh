#!/usr/bin/env bash
# Issue 5's evidence in one device call (~8 min): the throughput matrix at every page size
# against page 64, h_q = 8 against h_q = 16 (memory-bound rows packed, not padded), and the
# FP16 matrix (correctness and time, through the Python binding). Needs the bench binary
# (build/bench_decode) and, for FP16, the binding (benchmarks/device_suite.sh builds it).
#   benchmarks/feature_suite.sh [PAGES]   (default "64 1 16 32 128 256"; JSON and logs in $OUT)
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
pages=${1:-64 1 16 32 128 256}
B=${BENCH:-./build/bench_decode}
for pg in $pages; do
  timeout 200 $B --matrix --page "$pg" --json "$out/matrix-page$pg.json" > "$out/matrix-page$pg.log" 2>&1
  echo "page $pg rc=$?"
done
for pg in $pages; do
  [ "$pg" = 64 ] || python3 benchmarks/compare_json.py --across page "$out/matrix-page64.json" "$out/matrix-page$pg.json" | tail -n 1
done
timeout 60 $B --config 128,16384,8,1,1 --config 128,16384,16,1,1 --config 128,8192,8,1,1 --config 128,8192,16,1,1 \
  --json "$out/heads8.json" > "$out/heads8.log" 2>&1
python3 - "$out/heads8.json" <<'PY'
import json, sys
r = {(x["s_k"], x["h_q"]): x["gbps"] for x in json.load(open(sys.argv[1]))["results"]}
for sk in (8192, 16384):
    print(f"s_k {sk}: h_q=8 {r[(sk, 8)]:.0f} GB/s, h_q=16 {r[(sk, 16)]:.0f} GB/s, ratio {r[(sk, 8)] / r[(sk, 16)]:.3f}")
PY
if python3 -c "import flash_mla" 2>/dev/null; then
  timeout 200 python3 tests/test_flash_mla.py --dtype fp16 --json "$out/matrix-fp16.json" > "$out/matrix-fp16.log" 2>&1
  echo "fp16 matrix rc=$?"; tail -n 1 "$out/matrix-fp16.log"
else
  echo "fp16 matrix skipped: the flash_mla binding is not built"
fi
