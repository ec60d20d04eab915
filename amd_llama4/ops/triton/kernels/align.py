"""MoE block alignment on the device: routed slots grouped by expert, padded to whole blocks, with
the padded count left in device memory (no host sync; the fused-MoE grid is sized for the worst case)."""
import triton
import triton.language as tl


@triton.jit
def moe_align_kernel(ids_ptr, sorted_ptr, expert_ids_ptr, total_ptr, n, E,
                     BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr):
    # ids: [n] int (expert of each flat slot token*k + j) -> sorted: [P] slot ids grouped by expert,
    # stable, each group padded to a multiple of BLOCK; expert_ids: [P / BLOCK]; total: [1] used rows.
    # sorted / expert_ids arrive filled with the sentinel n / -1. One program per expert: each counts
    # every expert (to find where its own group starts), then places its own slots in order.
    e = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for start in range(0, n, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        ids = tl.load(ids_ptr + offs, mask=offs < n, other=-1).to(tl.int32)
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), axis=0)
    padded = tl.where(experts < E, (counts + BLOCK - 1) // BLOCK * BLOCK, 0)
    ends = tl.cumsum(padded, axis=0)
    end = tl.sum(tl.where(experts == e, ends, 0), axis=0)
    begin = end - tl.sum(tl.where(experts == e, padded, 0), axis=0)
    if e == 0:
        tl.store(total_ptr, tl.sum(padded, axis=0))
    for b in range(begin // BLOCK, end // BLOCK):
        tl.store(expert_ids_ptr + b, e)
    cursor = begin
    for start in range(0, n, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        ids = tl.load(ids_ptr + offs, mask=offs < n, other=-1).to(tl.int32)
        hit = (ids == e).to(tl.int32)
        rank = tl.cumsum(hit, axis=0) - hit  # position among this chunk's slots of expert e
        tl.store(sorted_ptr + cursor + rank, offs, mask=hit != 0)
        cursor += tl.sum(hit, axis=0)
