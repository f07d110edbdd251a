# Session 15 trace build: per (CTA, tile) clock64 events of the wide kernel (s15-trace.patch).
# ev0 producer warp 0 issued sub-tiles 0-1 (past its stage wait), ev1 warp 3 issued RoPE,
# ev2 the S owner enters issue_s, ev3 the S owner issued the last S wgmma (all sub-tiles landed);
# FP8 (ev0, ev1 absent): ev4 raw boxes issued, ev5 raw landed, ev6 expansion done.
import struct, sys
C, T, E = 1024, 64, 8
def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))] if v else float('nan')
for path in sys.argv[1:]:
    raw = open(path, 'rb').read()
    a = struct.unpack('<%dQ' % (C * T * E), raw)
    wait, win, lat, issue_gap, period = [], [], [], [], []
    raw_lat, expand, ready_to_s = [], [], []
    ctas = 0
    for c in range(C):
        base = c * T * E
        ev = [a[base + t * E: base + t * E + E] for t in range(T)]
        fp8 = any(ev[t][4] for t in range(T))
        need = (2, 3, 4, 5, 6) if fp8 else (0, 1, 2, 3)
        n = 0
        while n < T and all(ev[n][k] for k in need): n += 1
        if n < 6: continue
        ctas += 1
        for t in range(2, n):
            if fp8:
                e4, e5, e6 = ev[t][4], ev[t][5], ev[t][6]
                raw_lat.append(e5 - e4); expand.append(e6 - e5); ready_to_s.append(ev[t][2] - e6)
                e0, e1 = e4, e4
            else:
                e0, e1 = ev[t][0], ev[t][1]
            e2, e3 = ev[t][2], ev[t][3]
            wait.append(e3 - e2)          # S owner blocked on landing + 36 wgmma issues
            win.append(e2 - e1)           # RoPE refill issued this long before S wanted the tile
            lat.append(e3 - e1)           # >= RoPE landing latency when wait is large
            issue_gap.append(e1 - e0)     # warp 0's issue to warp 3's (the two releases)
            if t >= 3: period.append(ev[t][2] - ev[t - 1][2])  # S start to S start (per tile)
    print(path, 'CTAs', ctas, 'tiles', len(wait))
    for name, v in [('S wait (e3-e2)', wait), ('window (e2-e1)', win), ('RoPE issue->S done (e3-e1)', lat),
                    ('issue spread (e1-e0)', issue_gap), ('tile period (e2[t]-e2[t-1])', period),
                    ('FP8 raw issue->landed', raw_lat), ('FP8 expansion', expand), ('FP8 expanded->S start', ready_to_s)]:
        if not v: continue
        print('  %-28s mean %7.0f  p10 %7.0f  p50 %7.0f  p90 %7.0f clk' % (name, sum(v) / len(v), pct(v, .1), pct(v, .5), pct(v, .9)))
    print('  tiles whose S waited > 400 clk: %.0f%%' % (100.0 * sum(1 for w in wait if w > 400) / max(1, len(wait))))
