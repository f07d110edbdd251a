#!/usr/bin/env bash
# Session 20's GPU call, built on the CPU machine into build/exp20 (carry it whole; then run
# docs/experiments/s20run.sh there):
#   v23   HEAD (v22 kernels, the small kernel's plan overhead 2): bench, tests, core library
#   v22   61d4ece, session 19's HEAD (v22 kernels and plan, the launch helper)
#   p128  HEAD assembled by ptxas 12.8 (PyPI nvidia-cuda-nvcc-cu12==12.8.93) from nvcc 13.0's
#         PTX, its ISA version lowered 9.0 -> 8.7: does CUDA 13's ptxas cost the wide kernel?
set -e
cd /work/main
X=$PWD/docs/experiments
export EXP_DIR=build/exp20
rm -rf $EXP_DIR
bash $X/build_variant.sh v23 "" "" test_gpu test_fp8_cache flashmla | tail -2
REV=61d4ece bash $X/build_variant.sh v22 "" "" | tail -1
if [ ! -x /tmp/cudamix/bin/nvcc ]; then
  pip download -q --no-deps nvidia-cuda-nvcc-cu12==12.8.93 -d /tmp/nv128
  (cd /tmp/nv128 && unzip -o -q nvidia_cuda_nvcc*.whl -d x)
  mkdir -p /tmp/cudamix/bin
  for d in /usr/local/cuda/*; do [ "$(basename $d)" = bin ] || ln -sfn $d /tmp/cudamix/; done
  for f in /usr/local/cuda/bin/*; do
    case $(basename $f) in nvcc|nvcc.profile) cp $f /tmp/cudamix/bin/ ;; ptxas) ;; *) ln -sfn $f /tmp/cudamix/bin/ ;; esac
  done
  # nvcc runs the ptxas next to it; this one lowers the PTX version and runs ptxas 12.8.
  cat > /tmp/cudamix/bin/ptxas <<'W'
#!/usr/bin/env bash
args=()
for a in "$@"; do
  if [[ "$a" == *.ptx && -f "$a" ]]; then
    t=$(mktemp --suffix=.ptx); sed -E 's/^\.version 9\.[0-9]+/.version 8.7/' "$a" > "$t"; args+=("$t")
  else args+=("$a"); fi
done
exec /tmp/nv128/x/nvidia/cuda_nvcc/bin/ptxas "${args[@]}"
W
  chmod +x /tmp/cudamix/bin/ptxas
fi
NVCC=/tmp/cudamix/bin/nvcc bash $X/build_variant.sh p128 "" "" | tail -1
cp $X/ab_table.py $EXP_DIR/
du -sh $EXP_DIR
