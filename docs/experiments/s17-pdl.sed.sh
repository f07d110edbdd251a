# The combine as a programmatic dependent launch: every decode CTA triggers its dependents at
# entry; each combine CTA reads num_splits / cache_seqlens (written before the decode started)
# and exits at once when the decode writes its row itself (one piece), waiting for the decode
# grid (griddepcontrol.wait) only when it has partials to merge or an empty row to write. So
# the combine CTAs without work run on idle SMs under the decode instead of after it.
python3 - <<'PY'
import re
for f in ['src/sm90/decode_kernel.cuh','src/sm90/small_kernel.cuh']:
    s=open(f).read()
    old='''  extern __shared__ char smem_raw[];\n'''
    assert old in s
    s=s.replace(old, old+'''  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");\n''',1)
    open(f,'w').write(s)
f='src/combine.cu'; s=open(f).read()
old='''  if (n == 1 && !broken) return;  // the decode kernel wrote out and lse itself
'''
assert old in s
s=s.replace(old, old+'''  asm volatile("griddepcontrol.wait;" ::: "memory");
''')
old_launch=re.findall(r'combine_kernel<T, (\d+)><<<grid, kThreads, 0, stream>>>\(p\);', s)
assert len(old_launch)==3
s=s.replace('''    if (chunks == 16) {
      combine_kernel<T, 16><<<grid, kThreads, 0, stream>>>(p);
    } else if (chunks == 4) {
      combine_kernel<T, 4><<<grid, kThreads, 0, stream>>>(p);
    } else {
      combine_kernel<T, 1><<<grid, kThreads, 0, stream>>>(p);
    }''','''    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(kThreads);
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (chunks == 16) {
      check_cuda(cudaLaunchKernelEx(&cfg, combine_kernel<T, 16>, p), "combine");
    } else if (chunks == 4) {
      check_cuda(cudaLaunchKernelEx(&cfg, combine_kernel<T, 4>, p), "combine");
    } else {
      check_cuda(cudaLaunchKernelEx(&cfg, combine_kernel<T, 1>, p), "combine");
    }''')
open(f,'w').write(s)
PY
