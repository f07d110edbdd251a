#!/usr/bin/env bash
# Compile and link the torch binding on a CPU-only machine, so that a break in
# python/csrc fails CI. torch itself cannot be imported here (its CUDA dependencies are not
# installed), so this uses only the wheel's headers and shared libraries, not setup.py.
# Usage: .ci/check_binding.sh <path to build/libflashmla.a>
set -euo pipefail
core=${1:-build/libflashmla.a}
torch_version=${FLASHMLA_CI_TORCH:-2.11.0}  # what the H100 machine runs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download -q --no-deps --only-binary=:all: -d "$work/whl" "torch==$torch_version"
unzip -q "$work"/whl/torch-*.whl 'torch/include/*' 'torch/lib/libc10.so' \
  'torch/lib/libc10_cuda.so' 'torch/lib/libtorch.so' 'torch/lib/libtorch_cpu.so' \
  'torch/lib/libtorch_python.so' -d "$work"
t="$work/torch"
cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
py_inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")

g++ -std=c++17 -O1 -fPIC -Wall -D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_EXTENSION_NAME=_C \
  -Iinclude -I"$t/include" -I"$t/include/torch/csrc/api/include" -I"$cuda_home/include" \
  -I"$py_inc" -c python/csrc/flash_mla_torch.cpp -o "$work/binding.o"
g++ -shared "$work/binding.o" "$core" -L"$t/lib" -L"$cuda_home/lib64" \
  -lc10_cuda -lcudart -lc10 -ltorch -ltorch_cpu -ltorch_python -o "$work/_C.so"
echo "torch binding compiles and links against torch $torch_version"
