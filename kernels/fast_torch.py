"""The memory, the GRU and the CE loss in plain torch, faster: the same functions as ksr.py's
reference, less work. Each is proven by its test in tests/test_fast_paths.py (float64, values
and gradients, random shapes).

    memory_write            = ksr.memory_write, without autograd (a frozen KG: nothing in the
                              write is trained)
    MemoryWriteFunction     = ksr.memory_write (the final V) with a hand-written backward, for a
                              trained KG
    sorted_kv_memory        = ksr.kv_memory (same signature): one of the two above, then
                              ksr.memory_read                                   KSR(memory=...)
    sorted_gru              = nn.GRU(bias=False) (ksr.GRU), GRULayerFunction per layer: a
                              hand-written backward                             KSR(gru=...)
    all_items_cross_entropy = ksr.cross_entropy, AllItemsCrossEntropy: scores and softmax block
                              by block, a hand-written backward                 KSR(ce=...)

Why they are faster. Rows are sorted by length (longest first), so the rows still active at
step t are the first active[t] rows, and each step touches only those, in place; the reference
masks every row at every step and, under autograd, records every operation of every step. The
hand-written backwards do in one product per weight what autograd does in one per step. What
they buy on the default command: `python bench.py` (docs/results.md).
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
def memory_write(kg_seq, lengths, relations, all_steps=False):
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


class MemoryWriteFunction(torch.autograd.Function):
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

    Frozen KG (kg_seq needs no gradient, the default): memory_write, then the read.
    Trained KG, one read per row: MemoryWriteFunction, then the read. Trained KG and a read
    after every step (--freeze_kg False in sequence mode): there is no sorted backward for
    that case yet, so it runs the reference, ksr.kv_memory.
    """
    if not kg_seq.requires_grad:
        V = memory_write(kg_seq, lengths, relations, all_steps)  # (B, R, K) or (B, L, R, K)
    elif not all_steps:
        V = MemoryWriteFunction.apply(kg_seq, lengths, relations)
    else:
        return ksr.kv_memory(kg_seq, lengths, relations, query, gamma, all_steps)
    return ksr.memory_read(V, relations, query, gamma)


# ----------------------------------------------------------------------------
# The GRU

class GRULayerFunction(torch.autograd.Function):
    """One layer of nn.GRU(bias=False) on time-major rows sorted by length, with a hand-written
    backward; proven by tests/test_fast_paths.py::test_sorted_gru_matches_nn_gru.

    x (L, B, D), w_ih (3H, D), w_hh (3H, H), active[t] rows valid at step t -> h (L, B, H), 0 at
    padding. Per valid step (gates r, z, n in nn.GRU's order; gi = W_i x_t, gh = W_h h):
        r = sigmoid(gi_r + gh_r)   z = sigmoid(gi_z + gh_z)   c = tanh(gi_n + r gh_n)
        h' = c + z (h - c)                                   (= (1 - z) c + z h)
    Backward: with g = dL/dh' (from the loss at step t and from step t + 1), every gradient of the
    step is g times a factor known from the forward: dL/d(gi + gh) of the three gates is
        r: g (1 - z)(1 - c^2) gh_n r (1 - r)    z: g (h - c) z (1 - z)    n: g (1 - z)(1 - c^2)
    (gh_n's is r times n's), and dL/dh = g z + dL/dgh . W_h. The factors are made for all steps at
    once before the loop, so a step of the loop is 3 operations and one product.
    Why it is faster than nn.GRU on a CPU: the input projections of all steps are one product
    before the loop, the weight gradients one product each after it (nn.GRU's autograd makes two
    small products per step and records ~20 operations), and only the active rows are touched.
    """

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, active):
        L, B, _ = x.shape
        H = w_hh.shape[1]
        gi = (x.reshape(L * B, -1) @ w_ih.T).view(L, B, 3 * H)  # every step's W_i x_t in one product
        gh = x.new_zeros(L, B, 3 * H)  # W_h h_{t-1} of every step
        rz = x.new_zeros(L, B, 2 * H)  # gates r, z
        c = x.new_zeros(L, B, H)  # candidate n
        hs = x.new_zeros(L + 1, B, H)  # hs[t + 1]: h after step t (hs[0] = 0, the start); 0 at padding
        w_hh_t = w_hh.T
        # each step's slices, made in one call each (a step is a few small operations: views count)
        steps = zip(active, hs.unbind(0), hs[1:].unbind(0), gi[..., :2 * H].unbind(0), gi[..., 2 * H:].unbind(0),
                    gh.unbind(0), rz.unbind(0), c.unbind(0))
        for n, h_prev, h_next, gi_rz, gi_n, gh_t, rz_t, c_t in steps:
            if n == 0:
                break
            hp = h_prev[:n]  # the active rows are the first n (sorted by length)
            ght = torch.mm(hp, w_hh_t, out=gh_t[:n])
            r_z = torch.add(gi_rz[:n], ght[:, :2 * H], out=rz_t[:n]).sigmoid_()
            ct = torch.addcmul(gi_n[:n], r_z[:, :H], ght[:, 2 * H:], out=c_t[:n]).tanh_()
            torch.addcmul(ct, r_z[:, H:], hp - ct, out=h_next[:n])
        ctx.save_for_backward(x, w_ih, w_hh, hs, gh, rz, c)
        ctx.active = active
        return hs[1:]

    @staticmethod
    def backward(ctx, dh_all):
        x, w_ih, w_hh, hs, gh, rz, c = ctx.saved_tensors
        L, B, H = c.shape
        r, z, h_prev = rz[..., :H], rz[..., H:], hs[:-1]  # h_prev[t] = h_{t-1}
        a_n = (1 - z) * (1 - c * c)  # the factors, every step at once
        factor = x.new_empty(L, B, 3, H)
        torch.mul(a_n * gh[..., 2 * H:] * r, 1 - r, out=factor[:, :, 0])
        torch.mul((h_prev - c) * z, 1 - z, out=factor[:, :, 1])
        torch.mul(a_n, r, out=factor[:, :, 2])
        d_gh = torch.zeros_like(factor)  # dL/d(W_h h_{t-1}), gates r, z, n
        d_gi = x.new_empty(L, B, 3 * H)  # dL/d(W_i x_t): r, z as d_gh; n not through r
        g_all = torch.zeros_like(c)  # dL/dh_t
        dh = x.new_zeros(B, H)  # dL/dh_t from step t + 1
        steps = zip(ctx.active, dh_all.unbind(0), g_all.unbind(0), factor.unbind(0), d_gh.unbind(0), z.unbind(0))
        for n, dh_t, g_t, factor_t, d_gh_t, z_t in reversed(list(steps)):
            if n == 0:
                continue
            g = torch.add(dh[:n], dh_t[:n], out=g_t[:n])
            dg = torch.mul(factor_t[:n], g[:, None, :], out=d_gh_t[:n])
            torch.addmm(g * z_t[:n], dg.view(n, 3 * H), w_hh, out=dh[:n])  # h' = c + z (h - c); gh = W_h h
        d_gh = d_gh.view(L, B, 3 * H)
        d_gi[..., :2 * H] = d_gh[..., :2 * H]
        torch.mul(g_all, a_n, out=d_gi[..., 2 * H:])
        d_gi, d_gh = d_gi.view(L * B, 3 * H), d_gh.view(L * B, 3 * H)
        dx = (d_gi @ w_ih).view_as(x)
        return dx, d_gi.T @ x.reshape(L * B, -1), d_gh.T @ h_prev.reshape(L * B, H), None


class Rows(torch.autograd.Function):
    """x[order] for a permutation `order`, whose gradient is the inverse permutation: a gather
    both ways (autograd's x[order] scatters its gradient back with an accumulating index_put)."""

    @staticmethod
    def forward(ctx, x, order):
        ctx.save_for_backward(order)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, g):
        order, = ctx.saved_tensors
        return g.index_select(0, torch.argsort(order)), None


def sorted_gru(x, lengths, weights):
    """nn.GRU(bias=False, batch_first=True)(x)[0] at every valid step (0 at padding steps), on
    rows sorted by length: x (B, L, D), lengths (B,), weights [(w_ih, w_hh)] one pair per layer
    -> (B, L, H). ksr.GRU runs it when it is handed one (train.build_model does)."""
    L = x.shape[1]
    order = torch.argsort(lengths, descending=True)
    active = (lengths[order][None, :] > torch.arange(L, device=lengths.device)[:, None]).sum(1).tolist()
    h = Rows.apply(x, order).transpose(0, 1)  # (L, B, D), rows sorted: the first active[t] are valid at t
    for w_ih, w_hh in weights:
        h = GRULayerFunction.apply(h.contiguous(), w_ih, w_hh, active)
    return Rows.apply(h.transpose(0, 1), torch.argsort(order))  # back to the callers' row order


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
    items 1..N only, exp(s - m) once, in place, block by block while the block is in cache, and
    the backward turns that buffer into dL/ds in place.
    """
    BLOCK = 1024  # rows per block: its scores (1024 x N floats) still in cache for the exp

    @staticmethod
    def forward(ctx, p, q, targets):
        n, t = len(targets), targets - 1  # column j is item j + 1
        e = p.new_empty(n, q.shape[0] - 1)  # exp(s - m), block by block
        log_z, inv_z, s_target = p.new_empty(n), p.new_empty(n), p.new_empty(n)
        for i in range(0, n, AllItemsCrossEntropy.BLOCK):
            b = slice(i, i + AllItemsCrossEntropy.BLOCK)
            s = torch.mm(p[b], q[1:].T, out=e[b])
            s_target[b] = s.gather(1, t[b, None])[:, 0]
            m = s.amax(1, keepdim=True)
            z = s.sub_(m).exp_().sum(1)
            log_z[b] = m[:, 0] + z.log()
            inv_z[b] = z.reciprocal_()
        ctx.save_for_backward(p, q, t)
        ctx.e, ctx.inv_z = e, inv_z  # not inputs or outputs: kept on ctx, used up in backward
        return (log_z - s_target).mean()

    @staticmethod
    def backward(ctx, g):
        p, q, t = ctx.saved_tensors
        e, inv_z = ctx.e, ctx.inv_z
        del ctx.e, ctx.inv_z
        n = len(t)
        dp, dq = torch.empty_like(p), torch.zeros_like(q)
        inv_z.mul_(g / n)
        for i in range(0, n, AllItemsCrossEntropy.BLOCK):
            b = slice(i, i + AllItemsCrossEntropy.BLOCK)
            ds = e[b].mul_(inv_z[b, None])  # softmax * g / n, in place
            ds[torch.arange(len(ds), device=ds.device), t[b]] -= g / n
            torch.mm(ds, q[1:], out=dp[b])
            dq[1:].addmm_(ds.T, p[b])
        return dp, dq, None


def all_items_cross_entropy(p, q, targets):
    """ksr.cross_entropy, same signature and result (see AllItemsCrossEntropy)."""
    return AllItemsCrossEntropy.apply(p, q, targets)
