"""The fast paths in plain torch: the same functions as ksr.py's reference, less work.

    packed_gru        = ksr.GRU with packed=False (nn.GRU over all L steps)
                        proven by tests/test_fast_paths.py::test_packed_gru_matches_nn_gru
    memory_write      = the write of ksr.kv_memory, returning V (no autograd: frozen KG)
                        proven by test_memory_write_matches_reference
    sorted_kv_memory  = ksr.kv_memory (same signature): memory_write, or MemoryWriteFunction
                        when the KG is trained, then ksr.memory_read
                        proven by test_sorted_kv_memory_matches_reference (values, gradients)
    keep_freed_memory   not a function of the model: glibc told to keep freed memory

Why they are faster. In RecBole's prefix samples about a fifth of the steps are padding,
and nn.GRU / the reference run them at full cost. Here rows are sorted by length (longest
first), so the rows still active at step t are the first active[t] rows, and each step
touches only those. The GRU and the trainable-KG write get hand-written backwards (their
math is in the docstrings) instead of autograd's per-step records.
"""
import ctypes
import platform

import torch

import ksr


def keep_freed_memory():
    """Ask glibc to keep freed memory: a training batch allocates many blocks of a few MB,
    and page faults on freshly mapped blocks cost a fifth of a training step on 2 cores.
    Blocks up to 32 MiB (glibc's largest threshold) come from the heap and stay there once
    freed; bigger ones (a 20M-interaction dataset's arrays, an evaluation batch's scores
    over 27k items) are still mapped and unmapped on their own: kept in the heap they
    fragment it, and an evaluation grew to 3x its live memory. The price: prefix mode's GRU
    activations (2048 x 50 steps, ~150 MB) are mapped again every batch, and its ml-100k
    epoch went from 41.5 to 50.4 s on the AMD machine (docs/results.md); sequence mode (the
    default, blocks of a few MB) from 7.0 to 7.4 s, within noise. Process-wide, so only
    programs call it (train.py's train_main, tune.py, bench.py), never a library
    function. Linux/glibc only; elsewhere it does nothing."""
    if platform.system() != "Linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2 ** 20)  # M_MMAP_THRESHOLD: blocks under 32 MiB from the heap
        libc.mallopt(-1, 2 ** 30)       # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
    except (OSError, AttributeError):
        pass


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
def memory_write(item_kg, lengths, relations, all_steps=False):
    """The memory V (B, R, K) after kv_memory's write, without autograd; with all_steps=True
    the memory after every step, (B, L, R, K) (0 at padding steps).

    With a frozen KG nothing in the write is trained: rows sorted by length, only the rows
    still active at step t updated, in place.
    """
    B, L, K = item_kg.shape
    order, x, active = _by_length(item_kg, lengths)
    V = item_kg.new_zeros(B, relations.shape[0], K)
    states = item_kg.new_zeros(B, L, relations.shape[0], K) if all_steps else None
    for t in range(L):
        n = active[t]
        if n == 0:
            break
        Vn = V[:n]  # a view: the in-place update below writes V
        E = x[t, :n, None, :] + relations  # (n, R, K) attribute vectors
        z = torch.sigmoid((Vn * E).sum(-1, keepdim=True))  # (n, R, 1)
        Vn.add_(z * (E - Vn))  # (1 - z) V + z E
        if all_steps:
            states[order[:n], t] = Vn
    if all_steps:
        return states
    out = torch.empty_like(V)
    out[order] = V
    return out


class MemoryWriteFunction(torch.autograd.Function):
    """memory_write (final V) with a hand-written backward, for a trainable KG.

    Autograd through kv_memory records ~10 (B, R, K) tensors per step and masks every row
    at every step. Here only active rows are touched and the backward is written out. Per
    valid step t, for every relation a (g = v.E):
        v' = v + z (E - v),  z = sigmoid(g),  E = e_t + r_a
        dz = dv' . (E - v)            dg = dz z (1 - z)
        dv = dv' (1 - z) + dg E       de_t = sum_a (dv' z + dg v)
    Stores the memory before every valid step: sum(lengths) * R * K floats.
    """

    @staticmethod
    def forward(ctx, item_kg, lengths, relations):
        B, L, K = item_kg.shape
        order, x, active = _by_length(item_kg, lengths)
        x = x.contiguous()  # kept for backward
        V = item_kg.new_zeros(B, relations.shape[0], K)
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
        d_item_kg = torch.empty_like(dx.transpose(0, 1))
        d_item_kg[order] = dx.transpose(0, 1)
        return d_item_kg, None, None


def sorted_kv_memory(item_kg, lengths, relations, query, gamma, all_steps=False):
    """ksr.kv_memory, same signature and result, on rows sorted by length.

    Frozen KG (item_kg needs no gradient, the default): memory_write, then the read.
    Trained KG, one read per row: MemoryWriteFunction, then the read. Trained KG and a read
    after every step (--freeze_kg False in sequence mode): there is no sorted backward for
    that case yet, so it runs the reference, ksr.kv_memory.
    """
    if not item_kg.requires_grad:
        V = memory_write(item_kg, lengths, relations, all_steps)  # (B, R, K) or (B, L, R, K)
    elif not all_steps:
        V = MemoryWriteFunction.apply(item_kg, lengths, relations)
    else:
        return ksr.kv_memory(item_kg, lengths, relations, query, gamma, all_steps)
    return ksr.memory_read(V, relations, query, gamma)


# ----------------------------------------------------------------------------
# The GRU. Step t's active rows are one contiguous block of a packed layout (like
# nn.utils.rnn.PackedSequence, no padding anywhere); per step one small matmul forward and
# one backward; the weight gradients are single large matmuls at the end.

class PackedGRUFunction(torch.autograd.Function):
    """One bias-free GRU layer (PyTorch's gate order r, z, n) over a packed sequence.

    x (T, D): the active rows of step 0, then of step 1, ...; rows sorted by length so the
    rows active at step t are the first active[t] rows of step t-1; T = sum(active).
    Returns h (T, H), the hidden state of every active row at every step.
        r = sigmoid(W_ir x + W_hr h)    z = sigmoid(W_iz x + W_hz h)
        c = tanh(W_in x + r * (W_hn h))  h' = (1 - z) c + z h
    """

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, active):
        H = w_hh.shape[1]
        T = x.shape[0]
        gi = x @ w_ih.T  # (T, 3H): all input projections in one matmul
        out = x.new_empty(T, H)
        gates = x.new_empty(T, 3 * H)  # r, z, c per step, kept for backward
        ghn = x.new_empty(T, H)        # W_hn h, kept for backward
        h = x.new_zeros(active[0], H)
        off = 0
        for n in active:
            hp = h[:n]
            gh = hp @ w_hh.T  # (n, 3H)
            g = gi[off:off + n]
            rz = torch.sigmoid(g[:, :2 * H] + gh[:, :2 * H])
            r, z = rz[:, :H], rz[:, H:]
            c = torch.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = torch.addcmul(c, z, hp - c, out=out[off:off + n])  # (1 - z) c + z h, written in place
            gates[off:off + n, :2 * H] = rz
            gates[off:off + n, 2 * H:] = c
            ghn[off:off + n] = gh[:, 2 * H:]
            off += n
        ctx.save_for_backward(x, w_ih, w_hh, out, gates, ghn)
        ctx.active = active
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w_ih, w_hh, out, gates, ghn = ctx.saved_tensors
        active = ctx.active
        H = w_hh.shape[1]
        offs = [0]
        for n in active:
            offs.append(offs[-1] + n)
        dg = torch.empty_like(gates)   # gradient of the gate pre-activations, input side
        dgh = torch.empty_like(gates)  # gradient of W_hh h, recurrent side
        dh = x.new_zeros(active[0], H)  # dL/dh_t coming from step t+1 (0 for rows ending at t)
        for t in reversed(range(len(active))):
            n, off = active[t], offs[t]
            d = dout[off:off + n] + dh[:n]  # dL/dh_t
            rz, c = gates[off:off + n, :2 * H], gates[off:off + n, 2 * H:]
            r, z = rz[:, :H], rz[:, H:]
            hp = out[offs[t - 1]:offs[t - 1] + n] if t > 0 else x.new_zeros(n, H)
            dc = d * (1 - z) * (1 - c * c)  # through h' = (1-z) c + z h and c = tanh(.)
            drz = torch.cat([dc * ghn[off:off + n], d * (hp - c)], 1) * rz * (1 - rz)
            dg[off:off + n, :2 * H] = drz
            dg[off:off + n, 2 * H:] = dc
            dgh[off:off + n, :2 * H] = drz
            dgh[off:off + n, 2 * H:] = dc * r
            dh[:n] = d * z + dgh[off:off + n] @ w_hh  # dL/dh_{t-1} for the n active rows
        # h_{t-1} for every packed row: the first active[t] rows of step t-1 (0 at t = 0)
        hprev = torch.cat([x.new_zeros(active[0], H)] + [out[offs[t - 1]:offs[t - 1] + active[t]] for t in range(1, len(active))])
        dw_hh = dgh.T @ hprev
        dw_ih = dg.T @ x
        dx = dg @ w_ih
        return dx, dw_ih, dw_hh, None


def packed_gru(gru, x, lengths, all_steps=False, dropout=None):
    """ksr.GRU's forward with packed=False, on the valid steps only.

    gru: the bias-free nn.GRU whose weights are used; x (B, L, D), lengths (B,) -> h (B, H)
    at each row's last valid step, or (B, L, H) after every step (0 at padding steps).
    `dropout` is applied to the valid steps' inputs (padding is never read).
    """
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)
    order = torch.argsort(lengths, descending=True, stable=True)
    L = int(lengths.max())
    mask = lengths[order][None, :] > torch.arange(L, device=x.device)[:, None]  # (L, B) active
    active = mask.sum(1).tolist()
    t_idx, r_idx = mask.nonzero(as_tuple=True)  # packed position -> (step, sorted row)
    h = x[order[r_idx], t_idx]  # (T, D) packed input
    if dropout is not None:
        h = dropout(h)
    for layer in range(gru.num_layers):
        h = PackedGRUFunction.apply(h, getattr(gru, f"weight_ih_l{layer}"), getattr(gru, f"weight_hh_l{layer}"), active)
    if all_steps:
        out = h.new_zeros(B, x.shape[1], h.shape[1])
        out[order[r_idx], t_idx] = h
        return out
    offs = torch.tensor([0] + active, device=x.device).cumsum(0)
    rank = torch.empty_like(order)
    rank[order] = rows  # position of each row among the sorted rows
    return h[offs[lengths - 1] + rank]
