"""Device helpers shared by the kernel families."""
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column) in grouped order: GROUP_M consecutive row tiles walk the
    column tiles together, so each B (weight) tile is reused from cache."""
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % width) % group_m, (pid % width) // group_m


@triton.jit
def online_softmax_step(m_i, l_i, acc, s, v):
    """One key tile of flash attention in base 2: s [M, N] masked scores (log2 domain), v [N, D].
    -> the updated running max, running sum and unnormalised output."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc
