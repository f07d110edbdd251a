# Split-plan simulation: the closed-form contiguous plan (src/scheduler/plan.h) against a
# reordering plan (each part: largest remaining sequences that fit whole, then one cut of the
# next-largest that does not; the leftover piece is placed like any other sequence). Cost in
# 64-token blocks with ov = 5 per piece. Reports split sequences, pieces, the largest part cost.
import math, random, sys
OV = 5
def blocks(l): return (l + 63) // 64 if l > 0 else 0

def contiguous(lens, parts):
    costs = [blocks(l) + OV if l > 0 else 0 for l in lens]
    total = sum(costs); P = max(1, -(-total // parts))
    if len(lens) <= parts and max(costs) <= P + OV:   # whole-sequence plan
        return dict(split=0, pieces=sum(c > 0 for c in costs), makespan=max(costs), P=P)
    C = 0; pieces = []; part_cost = [0] * parts
    for c, l in zip(costs, lens):
        if c == 0: pieces.append(0); continue
        n = 1 + (C + c - 1) // P - (C + OV) // P
        pieces.append(n)
        # charge: blocks by position, ov to the part holding each piece's first position
        b = blocks(l)
        for k in range(b):
            part_cost[min(parts - 1, (C + OV + k) // P)] += 1
        starts = {min(parts - 1, (C + OV) // P)} | {q for q in range(parts) if C + OV < q * P < C + c}
        for q in starts: part_cost[q] += OV
        C += c
    return dict(split=sum(n > 1 for n in pieces), pieces=sum(pieces), makespan=max(part_cost), P=P)

def reorder(lens, parts, slack=2):
    items = sorted([blocks(l) for l in lens if l > 0], reverse=True)
    ids = list(range(len(items)))
    total = sum(items) + OV * len(items)
    P = max(1, -(-total // parts))
    rem = [[b, i, False] for b, i in zip(items, ids)]   # blocks left, seq id, already cut
    cut_seqs = set(); pieces = 0; part_cost = []
    for p in range(parts):
        cap = P + slack if p < parts - 1 else 10**9
        cost = 0
        while rem:
            # largest remaining that fits whole (with its overhead)
            j = next((k for k, r in enumerate(rem) if cost + r[0] + OV <= cap), None)
            if j is None: break
            cost += rem[j][0] + OV; pieces += 1; rem.pop(j)
        if rem and cap - cost > OV + slack and p < parts - 1:
            r = rem[0]; take = cap - slack - cost - OV   # cut the largest remaining
            if take > 0:
                r[0] -= take; cost += take + OV; pieces += 1; cut_seqs.add(r[1]); rem.sort(reverse=True)
        part_cost.append(cost)
        if not rem: break
    return dict(split=len(cut_seqs), pieces=pieces, makespan=max(part_cost), P=P)

def flashmla_lens(b, mean, seed):
    rng = random.Random(seed)
    return [min(max(int(rng.gauss(mean, mean / 2)), 1), 2 * mean) for _ in range(b)]

cases = []
for seed in range(5):
    cases.append(("varied b128 mean8k parts132", flashmla_lens(128, 8192, seed), 132))
    cases.append(("varied b128 mean4k parts132", flashmla_lens(128, 4096, seed), 132))
    cases.append(("varied b128 mean8k parts66", flashmla_lens(128, 8192, seed), 66))
    rng = random.Random(seed)
    cases.append(("b256 0-2047 parts132", [rng.randrange(0, 2048) for _ in range(256)], 132))
print("%-30s %28s %28s" % ("case", "contiguous split/pieces/mk", "reorder split/pieces/mk"))
for name, lens, parts in cases:
    a = contiguous(lens, parts); r = reorder(lens, parts)
    print("%-30s %10d %7d %6d(P%d) %10d %7d %6d" % (name, a["split"], a["pieces"], a["makespan"], a["P"], r["split"], r["pieces"], r["makespan"]))

def nextfit_sorted(lens, parts, m=4, slack=2, order="desc"):
    items = [blocks(l) for l in lens if l > 0]
    if order == "desc": items.sort(reverse=True)
    costs_left = sum(items) + OV * len(items)
    queue = [[b, i, False] for i, b in enumerate(items)]
    cut = set(); pieces = 0; part_cost = []; qi = 0
    for p in range(parts):
        if qi >= len(queue): break
        target = -(-costs_left // (parts - p))
        cost = 0
        while qi < len(queue):
            b, i, _ = queue[qi]
            if cost + b + OV <= target + slack:       # whole
                cost += b + OV; pieces += 1; qi += 1; continue
            if target - cost - OV < m and cost > 0:    # small gap: close at the edge
                break
            take = max(1, target - cost - OV)          # cut
            if p == parts - 1: take = b
            queue[qi][0] -= take; cost += take + OV; pieces += 1; cut.add(i)
            if queue[qi][0] == 0: qi += 1
            break
        costs_left -= cost - 0
        # costs_left counts OV once per remaining item; a cut item pays OV again next part
        costs_left += OV if (qi < len(queue) and queue[qi][1] in cut and queue[qi][0] > 0) else 0
        part_cost.append(cost)
    left = sum(q[0] for q in queue[qi:])
    return dict(split=len(cut), pieces=pieces, makespan=max(part_cost), left=left)

print()
print("%-30s %22s %26s %26s" % ("case", "contiguous", "nextfit sorted m4", "nextfit given order m4"))
for name, lens, parts in cases:
    a = contiguous(lens, parts); r = nextfit_sorted(lens, parts); g = nextfit_sorted(lens, parts, order="given")
    print("%-30s %5d %5d %6d(P%d) %6d %6d %6d l%d %6d %6d %6d l%d" % (name, a["split"], a["pieces"], a["makespan"], a["P"], r["split"], r["pieces"], r["makespan"], r["left"], g["split"], g["pieces"], g["makespan"], g["left"]))
