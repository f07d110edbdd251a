# Split partials in the output's 16-bit type instead of fp32 (same element index, half the
# bytes): the decode epilogues write T, the combine reads 4 T per thread (8 bytes).
python3 - <<'PY'
f='src/sm90/decode_common.cuh'; s=open(f).read()
old='''      float* oa = p.o_accum + idx * kHeadDimV + wg * kColsPerMathWG;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<float2*>(oa + j * 8 + quad * 2) =
            make_float2(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
      }'''
new='''      T* oa = reinterpret_cast<T*>(p.o_accum) + idx * kHeadDimV + wg * kColsPerMathWG;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<typename ElementOps<T>::Pair*>(oa + j * 8 + quad * 2) =
            ElementOps<T>::pack(o[j * 4 + half * 2] * inv, o[j * 4 + half * 2 + 1] * inv);
      }'''
assert old in s; s=s.replace(old,new); open(f,'w').write(s)
f='src/sm90/small_kernel.cuh'; s=open(f).read()
old='''        float* oa = p.o_accum + idx * kHeadDimV;'''
assert old in s; s=s.replace(old,'''        T* oa = reinterpret_cast<T*>(p.o_accum) + idx * kHeadDimV;''')
for a in ('dim0','dim1'):
    r = 'r0' if a=='dim0' else 'r1'
    old='          oa[64 * j + %s] = o[j][%s] * x;' % (a, r)
    assert old in s, old
    s=s.replace(old,'          oa[64 * j + %s] = ElementOps<T>::from_float(o[j][%s] * x);' % (a, r))
open(f,'w').write(s)
f='src/combine.cu'; s=open(f).read()
old='''  const float* o_part = p.o_accum + (first * split_stride + row) * kHeadDimV + col;'''
assert old in s; s=s.replace(old,'''  const T* o_part = reinterpret_cast<const T*>(p.o_accum) + (first * split_stride + row) * kHeadDimV + col;''')
old='''        return *reinterpret_cast<const float4*>(o_part + (base + i) * split_stride * kHeadDimV);'''
assert old in s; s=s.replace(old,'''        const uint2 u = *reinterpret_cast<const uint2*>(o_part + (base + i) * split_stride * kHeadDimV);
        const T* e = reinterpret_cast<const T*>(&u);
        return make_float4(ElementOps<T>::to_float(e[0]), ElementOps<T>::to_float(e[1]),
                           ElementOps<T>::to_float(e[2]), ElementOps<T>::to_float(e[3]));''')
open(f,'w').write(s)
PY
