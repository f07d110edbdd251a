# Timing probe (wrong output): the FP8 small kernel's TMA loads each tile as one box of whole
# 656-byte records (a UINT32 view, 164 x 64, no swizzle) instead of 4 latent + RoPE + scales
# boxes whose 128-byte rows start 16 bytes off a 32-byte sector for every odd token. The math
# reads the stage as if it held the old layout. Question: is the FP8 stream's 2.4% lower
# bandwidth than BF16's the box pattern (sectors touched per byte)?
python3 - <<'PY'
f='src/sm90/decode_launch.cuh'; s=open(f).read()
old='''    maps.kv = make_map(p, CU_TENSOR_MAP_DATA_TYPE_UINT8, 0, kHeadDimV, 128,
                       CU_TENSOR_MAP_SWIZZLE_NONE, "FP8 latent bytes");'''
assert old in s
s=s.replace(old,'''    maps.kv = make_map(p, CU_TENSOR_MAP_DATA_TYPE_UINT32, 0, 164, 164,
                       CU_TENSOR_MAP_SWIZZLE_NONE, "FP8 records (probe)");''')
open(f,'w').write(s)
f='src/sm90/small_fp8.cuh'; s=open(f).read()
old='''    issue_fp8_boxes(p, &maps.fp8_latent_sw128, maps, tile, kv_head, base, base + kFp8ScalesOffset,
                    base + kFp8RopeOffset, &s.staged_full[st]);'''
assert old in s
s=s.replace(old,'''    {
      const int box_rows = p.page_block_size < kBlockN ? p.page_block_size : kBlockN;
      const int live = min(tile.seqlen - tile.blk * kBlockN, kBlockN);
      const int boxes = (live + box_rows - 1) / box_rows;
      const int32_t* table = tile.table(p);
      mbar_expect_tx(&s.staged_full[st], boxes * box_rows * 656);
      for (int b = 0; b < boxes; ++b) {
        const int tok = tile.blk * kBlockN + b * box_rows;
        const int page = table[tok >> log2_pow2(p.page_block_size)];
        tma_load_4d(base + b * box_rows * 656, &maps.kv, &s.staged_full[st], 0,
                    tok & (p.page_block_size - 1), kv_head, page);
      }
    }''')
open(f,'w').write(s)
PY
