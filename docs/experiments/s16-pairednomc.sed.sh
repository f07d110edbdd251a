# Over s14-paired.patch: keep the pair's coupled releases (empty counts both CTAs, remote
# arrives, cluster syncs) but let each CTA load every sub-tile itself, without multicast.
# Isolates the coupling's cost from the multicast's.
python3 - <<'PY'
f='src/sm90/decode_producers.cuh'
s=open(f).read()
old='''        if ((t & 1) == static_cast<int>(rank)) {
          tma_load_4d_multicast(s.kv[stage][t], kv_map, &s.full[stage][t], t * kSubCols,
                                (tile.blk * kBlockN) & (p.page_block_size - 1), kv_head,
                                pages.of(0), 0x3);
        }'''
new='''        (void)rank;
        tma_load_4d(s.kv[stage][t], kv_map, &s.full[stage][t], t * kSubCols,
                    (tile.blk * kBlockN) & (p.page_block_size - 1), kv_head, pages.of(0));'''
assert old in s
open(f,'w').write(s.replace(old,new))
PY
