#!/usr/bin/env bash
# The whole GPU check in one call (device time is scarce): builds the thin torch binding
# against a prebuilt core (build/libflashmla.a, carried from the build machine), then runs the
# C++ GPU tests, pytest, the 48-config matrix and the C++ benchmark. Logs go to $OUT (or out/).
#   benchmarks/device_suite.sh [quick|full|bench]   (default: full)
set -uo pipefail
mode=${1:-full}
out=${OUT:-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $*"; }

# PyTorch's libstdc++ is the system one: build the binding with the system compiler. A g++
# that links its own libstdc++ statically (seen on the device image: /opt/gcc) puts a second
# copy of std::ostream into _C.so, and torch's error formatting then crashes in it.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
step "build torch binding against build/libflashmla.a (CXX=${CXX:-default})"
FLASHMLA_PREBUILT_CORE=build/libflashmla.a python3 setup.py build_ext --inplace \
  >"$out/binding_build.log" 2>&1 || { tail -40 "$out/binding_build.log"; exit 1; }

if [ "$mode" != bench ]; then
  step "C++ GPU tests"
  timeout 300 ./build/test_gpu >"$out/test_gpu.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED) " "$out/test_gpu.log"
  step "pytest tests/python"
  timeout 400 python3 -m pytest tests/python -rs -q -x >"$out/pytest.log" 2>&1 || status=1
  tail -5 "$out/pytest.log"
fi

step "tests/test_flash_mla.py ($mode)"
args=(--json "$out/matrix.json")
[ "$mode" = quick ] && args+=(--quick)
timeout 500 python3 tests/test_flash_mla.py "${args[@]}" 2>&1 | tee "$out/matrix.log" | tail -60 || status=1
exit $status
