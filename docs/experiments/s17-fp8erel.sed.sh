# FP8 small kernel: release a stage once every values warp has loaded its last V fragments
# (ldmatrix into registers) instead of after the last O^T wgmma completes; staged_empty then
# counts the 4 values warps.
python3 - <<'PY'
f='src/sm90/small_kernel.cuh'; s=open(f).read()
old='''      for (int kp = 0; kp < 2; ++kp) fp8_v_fragments(st, 2 * q + u, 2 * kp, warp, lane, a[q % 2][u][kp]);
'''
new=old+'''    if (q == 3) {  // the stage's last read: every later step reads registers and P^T
      __syncwarp();
      if (lane == 0) mbar_arrive(&s.staged_empty[stage_index]);
    }
'''
assert old in s; s=s.replace(old,new)
old='''        if (tid == 0) mbar_arrive(&s.staged_empty[fp8_stage_of<kBlocks>(n)]);
'''
assert old in s; s=s.replace(old,'')
old='''        mbar_init(&s.staged_empty[t], 1);  // the values warpgroup's thread 0'''
assert old in s; s=s.replace(old,'''        mbar_init(&s.staged_empty[t], 4);  // lane 0 of each values warp''')
open(f,'w').write(s)
PY
