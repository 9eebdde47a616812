"""The memory and the CE loss in plain torch, faster: the same functions as ksr.py's
reference, less work. Each is proven by its test in tests/test_fast_paths.py (float64, values
and gradients, random shapes).

    sorted_memory_write            = ksr.memory_write, without autograd (a frozen KG: nothing in the
                              write is trained)
    SortedMemoryWriteFunction     = ksr.memory_write (the final V) with a hand-written backward, for a
                              trained KG
    sorted_kv_memory        = ksr.kv_memory (same signature): one of the two above, then
                              ksr.memory_read                                   KSR(memory=...)
    all_items_cross_entropy = ksr.cross_entropy, AllItemsCrossEntropy: scores item-major, the
                              softmax in place, a hand-written backward         KSR(ce=...)

Why they are faster. Rows are sorted by length (longest first), so the rows still active at
step t are the first active[t] rows, and each step touches only those, in place; the reference
masks every row at every step and, under autograd, records every operation of every step. The
CE makes its (N, n) scores once and turns them into their gradient in place. What they buy on
the default command: `python -m bench.epoch` (docs/results.md). (The GRU has no fast path in torch:
nn.GRU's own loop beats a hand-written backward in Python; on the CPU it is compiled, kernels/cpu.py,
with a frozen KG's memory write.)
"""
import torch

import ksr


def _by_length(x, lengths):
    """Rows sorted by length (longest first), time-major, and how many are active per step:
    the rows still active at step t are then the first active[t] rows."""
    L = x.shape[1]
    order = torch.argsort(lengths, descending=True)
    xt = x[order].transpose(0, 1)  # (L, B, ...)
    active = (lengths[order][None, :] > torch.arange(L, device=lengths.device)[:, None]).sum(1).tolist()
    return order, xt, active


# ----------------------------------------------------------------------------
# The memory

@torch.no_grad()
def sorted_memory_write(kg_seq, lengths, relations, all_steps=False):
    """ksr.memory_write without autograd: V (B, R, K), or with all_steps=True the memory
    after every step (B, L, R, K) (0 at padding steps).

    With a frozen KG nothing in the write is trained: rows sorted by length, only the rows
    still active at step t updated, in place (all_steps: written straight into the step's
    slot of the result, every step's attribute vectors E made in one operation).
    """
    B, L, K = kg_seq.shape
    order, x, active = _by_length(kg_seq, lengths)  # x (L, B, K), rows sorted
    V = kg_seq.new_zeros(B, relations.shape[0], K)
    if all_steps:
        E_all = x[:, :, None, :] + relations  # (L, B, R, K): sum(lengths) x R x K floats, as the result
        states = kg_seq.new_zeros(L, B, relations.shape[0], K)  # states[t, :n]: the memory after step t
    for t, n in enumerate(active):
        if n == 0:
            break
        Vn = V[:n]  # a view: the first n rows are the ones still active
        E = E_all[t, :n] if all_steps else x[t, :n, None, :] + relations  # (n, R, K) attribute vectors
        z = torch.sigmoid((Vn * E).sum(-1, keepdim=True))  # (n, R, 1)
        if all_steps:
            V = torch.addcmul(Vn, z, E - Vn, out=states[t, :n])  # (1 - z) V + z E, kept as step t's
        else:
            Vn.addcmul_(z, E - Vn)  # (1 - z) V + z E, in place
    result = states.transpose(0, 1) if all_steps else V  # rows still sorted by length
    out = torch.empty_like(result)
    out[order] = result
    return out


class SortedMemoryWriteFunction(torch.autograd.Function):
    """ksr.memory_write (the final V) with a hand-written backward, for a trainable KG; proven
    by tests/test_fast_paths.py::test_memory_write_function_matches_reference.

    Autograd through ksr.memory_write records ~10 (B, R, K) tensors per step and masks every row
    at every step. Here only active rows are touched and the backward is written out. Per
    valid step t, for every relation a (g = v.E):
        v' = v + z (E - v),  z = sigmoid(g),  E = e_t + r_a
        dz = dv' . (E - v)            dg = dz z (1 - z)
        dv = dv' (1 - z) + dg E       de_t = sum_a (dv' z + dg v)
    Stores the memory before every valid step: sum(lengths) * R * K floats.
    """

    @staticmethod
    def forward(ctx, kg_seq, lengths, relations):
        B, L, K = kg_seq.shape
        order, x, active = _by_length(kg_seq, lengths)
        x = x.contiguous()  # kept for backward
        V = kg_seq.new_zeros(B, relations.shape[0], K)
        history = []  # V before step t, active rows
        for t in range(L):
            n = active[t]
            if n == 0:
                break
            Vn = V[:n]
            history.append(Vn.clone())
            E = x[t, :n, None, :] + relations  # (n, R, K)
            z = torch.sigmoid((Vn * E).sum(-1, keepdim=True))  # (n, R, 1)
            Vn.add_(z * (E - Vn))
        ctx.save_for_backward(x, relations, order)
        ctx.history = history
        out = torch.empty_like(V)
        out[order] = V
        return out

    @staticmethod
    def backward(ctx, dV_out):
        x, relations, order = ctx.saved_tensors
        dV = dV_out[order].contiguous()  # (B, R, K), sorted rows
        dx = torch.zeros_like(x)  # (L, B, K)
        for t in reversed(range(len(ctx.history))):
            Vp = ctx.history[t]  # (n, R, K) memory before step t
            n = Vp.shape[0]
            E = x[t, :n, None, :] + relations
            z = torch.sigmoid((Vp * E).sum(-1, keepdim=True))
            dVn = dV[:n]
            dg = (dVn * (E - Vp)).sum(-1, keepdim=True) * z * (1 - z)
            dx[t, :n] = (dVn * z + dg * Vp).sum(1)  # dE summed over relations: E = e_t + r_a
            dVn.mul_(1 - z).add_(dg * E)  # in place: dV[:n] becomes dL/dV before step t
        d_kg_seq = torch.empty_like(dx.transpose(0, 1))
        d_kg_seq[order] = dx.transpose(0, 1)
        return d_kg_seq, None, None


def sorted_kv_memory(kg_seq, lengths, relations, query, gamma, all_steps=False):
    """ksr.kv_memory, same signature and result, on rows sorted by length.

    Frozen KG (kg_seq needs no gradient, the default): sorted_memory_write, then the read.
    Trained KG, one read per row: SortedMemoryWriteFunction, then the read. Trained KG and a read
    after every step (--freeze_kg False in sequence mode): there is no sorted backward for
    that case yet, so it runs the reference, ksr.kv_memory.
    """
    if not kg_seq.requires_grad:
        V = sorted_memory_write(kg_seq, lengths, relations, all_steps)  # (B, R, K) or (B, L, R, K)
    elif not all_steps:
        V = SortedMemoryWriteFunction.apply(kg_seq, lengths, relations)
    else:
        return ksr.kv_memory(kg_seq, lengths, relations, query, gamma, all_steps)
    return ksr.memory_read(V, relations, query, gamma)


# ----------------------------------------------------------------------------
# The loss

class AllItemsCrossEntropy(torch.autograd.Function):
    """ksr.cross_entropy (softmax over items 1..N of p . q_i, mean over targets) with a
    hand-written backward; proven by test_all_items_cross_entropy_matches_reference.

    p (n, D), q (N + 1, D) with row 0 the padding item, targets (n,) in 1..N. With s = p . q_i,
    m = max_i s and Z = sum_i exp(s_i - m):
        loss = mean(m + log Z - s_target)        dL/ds_i = (exp(s_i - m) / Z - [i = target]) / n
    Why it is faster than the reference (F.cross_entropy on scores with a -inf padding column,
    which makes and reads ~7 (n, N) tensors and computes exp twice): the scores are made for
    items 1..N only, exp(s - m) once, in place, and the backward turns that buffer into dL/ds in
    place. They are made item-major, s^T = q p^T (N, n): with D = 64, torch's BLAS makes that
    product ~1.5x faster than p q^T (bench/epoch.py's machine), and the softmax's sums run down columns.
    """

    @staticmethod
    def forward(ctx, p, q, targets):
        n, t = len(targets), targets - 1  # row j of s^T is item j + 1
        e = q[1:] @ p.T  # s^T (N, n), becomes exp(s - m) in place
        s_target = e[t, torch.arange(n, device=e.device)]
        m = e.amax(0)
        z = e.sub_(m).exp_().sum(0)
        ctx.save_for_backward(p, q, t, z.reciprocal())
        ctx.e = e  # not an input or output: kept on ctx, used up in backward
        return (m + z.log() - s_target).mean()

    @staticmethod
    def backward(ctx, g):
        p, q, t, inv_z = ctx.saved_tensors
        e = ctx.e
        del ctx.e
        n = len(t)
        ds = e.mul_(inv_z * (g / n))  # dL/ds^T = softmax * g / n, in place
        ds[t, torch.arange(n, device=ds.device)] -= g / n
        dq = torch.zeros_like(q)
        torch.mm(ds, p, out=dq[1:])
        return ds.T @ q[1:], dq, None


def all_items_cross_entropy(p, q, targets):
    """ksr.cross_entropy, same signature and result (see AllItemsCrossEntropy)."""
    return AllItemsCrossEntropy.apply(p, q, targets)
