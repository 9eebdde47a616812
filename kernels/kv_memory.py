"""KSR's key-value memory (write + read) as one fused Triton kernel, forward and backward.

Computes exactly ksr.kv_memory (the plain-torch reference, tests/test_kernels.py proves it),
with the same signature; KSR runs it with memory_impl="fused":
for each valid step t and relation a,
    E_a = e_t + r_a,   z_a = sigmoid(<V_a, E_a>),   V_a <- V_a + z_a (E_a - V_a)     (write)
    w = softmax(gamma * <q, r_a>) over a,   m = sum_a w_a V_a                           (read)
with V starting at zero; q is the read query (s_t in ksr.py and the README: here `s_` is
the prefix of strides). One program per batch row keeps the whole memory V (R x K) on
chip for all L steps; no (B, L, R, K) tensor is ever made unless item_kg needs a gradient.

Order of this file: the read helpers, forward kernel, backward kernels (math above them),
launchers, the autograd Function, the public function.
"""
import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows, or simply not installed: fused_kv_memory raises a clear error
    triton = None

POISON_OUTPUTS = False  # tests set this: fresh outputs are NaN-filled, so an element never written fails


def _new(shape, like):
    out = torch.empty(shape, device=like.device, dtype=torch.float32)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


if triton is not None:

    @triton.jit
    def _row_setup(p_rel, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        """Offsets and masks of one (R, K) memory padded to (BLOCK_R, BLOCK_K), and the keys."""
        o_r, o_k = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_K)
        m_r, m_k = o_r < R, o_k < K
        m_rk = m_r[:, None] & m_k[None, :]
        o_rk = o_r[:, None] * K + o_k[None, :]
        b_rel = tl.load(p_rel + o_rk, mask=m_rk, other=0.0)  # (BLOCK_R, BLOCK_K), the keys r_a
        return o_k, m_r, m_k, m_rk, o_rk, b_rel

    @triton.jit
    def _read(b_V, b_rel, b_q, gamma, m_r):
        """w = softmax(gamma q.r_a) over the R real relations, m = sum_a w_a V_a."""
        b_logit = gamma * tl.sum(b_rel * b_q[None, :], axis=1)
        b_logit = tl.where(m_r, b_logit, float("-inf"))
        b_w = tl.exp(b_logit - tl.max(b_logit, axis=0))
        b_w = b_w / tl.sum(b_w, axis=0)
        return tl.sum(b_w[:, None] * b_V, axis=0), b_w

    @triton.jit
    def _read_bwd(b_V, b_rel, b_q, b_dm, gamma, m_r):
        """Gradients of m = sum_a w_a V_a with w = softmax(gamma q.r): (dq, dV)."""
        _, b_w = _read(b_V, b_rel, b_q, gamma, m_r)
        b_dw = tl.sum(b_V * b_dm[None, :], axis=1)                 # dL/dw_a = <dm, V_a>
        b_dlogit = b_w * (b_dw - tl.sum(b_w * b_dw, axis=0))       # through the softmax
        b_dq = gamma * tl.sum(b_dlogit[:, None] * b_rel, axis=0)   # logit_a = gamma <q, r_a>
        return b_dq, b_w[:, None] * b_dm[None, :]                  # dL/dV_a = w_a dm

    @triton.jit
    def _kv_memory_fwd_kernel(
        # pointers
        p_x, p_len, p_rel, p_q, p_out, p_states, p_final,
        # sizes
        L, R, K, gamma,
        # strides of item_kg (x), query (q) and out, in elements
        s_xb, s_xt, s_xk, s_qb, s_qt, s_qk, s_ob, s_ot, s_ok,
        # compile-time switches and blocks
        PER_STEP: tl.constexpr, STORE_STATES: tl.constexpr, STORE_FINAL: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i_b = tl.program_id(0)
        o_k, m_r, m_k, m_rk, o_rk, b_rel = _row_setup(p_rel, R, K, BLOCK_R, BLOCK_K)
        n = tl.load(p_len + i_b).to(tl.int32)
        b_V = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
        for t in range(0, n):
            b_e = tl.load(p_x + i_b * s_xb + t * s_xt + o_k * s_xk, mask=m_k, other=0.0)
            b_E = tl.where(m_rk, b_e[None, :] + b_rel, 0.0)  # attribute vectors; 0 in padded rows
            b_z = tl.sigmoid(tl.sum(b_V * b_E, axis=1))
            b_V = b_V + b_z[:, None] * (b_E - b_V)
            if STORE_STATES:  # V after step t, for the backward of a trainable item_kg
                tl.store(p_states + (i_b * L + t) * R * K + o_rk, b_V, mask=m_rk)
            if PER_STEP:
                b_q = tl.load(p_q + i_b * s_qb + t * s_qt + o_k * s_qk, mask=m_k, other=0.0)
                b_m, _ = _read(b_V, b_rel, b_q, gamma, m_r)
                tl.store(p_out + i_b * s_ob + t * s_ot + o_k * s_ok, b_m, mask=m_k)
        if PER_STEP:
            for t in range(n, L):  # padding steps read nothing
                tl.store(p_out + i_b * s_ob + t * s_ot + o_k * s_ok, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
        else:
            b_q = tl.load(p_q + i_b * s_qb + o_k * s_qk, mask=m_k, other=0.0)
            b_m, _ = _read(b_V, b_rel, b_q, gamma, m_r)
            tl.store(p_out + i_b * s_ob + o_k * s_ok, b_m, mask=m_k)
        if STORE_FINAL:
            tl.store(p_final + i_b * R * K + o_rk, b_V, mask=m_rk)

    # Backward. With V_t the memory after step t (V_{-1} = 0), g_a = <V_{t-1,a}, E_a>:
    #   read  m_t = sum_a w_a V_{t,a}, w = softmax(gamma q r^T):
    #         dw_a = <dm, V_{t,a}>,  dlogit_a = w_a (dw_a - sum_b w_b dw_b),
    #         dq = gamma sum_a dlogit_a r_a,  dV_{t,a} += w_a dm
    #   write V_t = V_{t-1} + z (E - V_{t-1}), z = sigmoid(g):
    #         dg_a = <dV_{t,a}, E_a - V_{t-1,a}> z_a (1 - z_a)
    #         dV_{t-1,a} = (1 - z_a) dV_{t,a} + dg_a E_a
    #         de_t = sum_a (z_a dV_{t,a} + dg_a V_{t-1,a})        (E_a = e_t + r_a)
    # Only the read depends on q, so when item_kg needs no gradient (frozen KG) dq needs
    # V_t alone: the final V (stored by the forward) for a (B, K) query, a recomputing
    # forward sweep for a (B, L, K) query. When item_kg needs a gradient we walk time in
    # reverse over the states the forward stored, one (R, K) memory per valid step:
    # B * L * R * K floats (629 MB at B=2048, L=50, R=24, K=64). Recomputing them from
    # checkpoints would save that memory at the cost of a second forward; on a GPU with
    # HBM the stored states are cheaper, and the frozen-KG default never makes them.

    @triton.jit
    def _kv_memory_bwd_query_kernel(
        p_x, p_len, p_rel, p_q, p_dm, p_dq, p_final,
        L, R, K, gamma,
        s_xb, s_xt, s_xk, s_qb, s_qt, s_qk,  # dm and dq share query's layout (made contiguous)
        PER_STEP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i_b = tl.program_id(0)
        o_k, m_r, m_k, m_rk, o_rk, b_rel = _row_setup(p_rel, R, K, BLOCK_R, BLOCK_K)
        if PER_STEP:
            n = tl.load(p_len + i_b).to(tl.int32)
            b_V = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
            for t in range(0, n):  # recompute the writes, differentiate each read
                b_e = tl.load(p_x + i_b * s_xb + t * s_xt + o_k * s_xk, mask=m_k, other=0.0)
                b_E = tl.where(m_rk, b_e[None, :] + b_rel, 0.0)
                b_z = tl.sigmoid(tl.sum(b_V * b_E, axis=1))
                b_V = b_V + b_z[:, None] * (b_E - b_V)
                o_q = i_b * s_qb + t * s_qt + o_k * s_qk
                b_dq, _ = _read_bwd(b_V, b_rel, tl.load(p_q + o_q, mask=m_k, other=0.0),
                                    tl.load(p_dm + o_q, mask=m_k, other=0.0), gamma, m_r)
                tl.store(p_dq + o_q, b_dq, mask=m_k)
            for t in range(n, L):
                tl.store(p_dq + i_b * s_qb + t * s_qt + o_k * s_qk, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
        else:
            b_V = tl.load(p_final + i_b * R * K + o_rk, mask=m_rk, other=0.0)
            o_q = i_b * s_qb + o_k * s_qk
            b_dq, _ = _read_bwd(b_V, b_rel, tl.load(p_q + o_q, mask=m_k, other=0.0),
                                tl.load(p_dm + o_q, mask=m_k, other=0.0), gamma, m_r)
            tl.store(p_dq + o_q, b_dq, mask=m_k)

    @triton.jit
    def _kv_memory_bwd_kernel(
        p_x, p_len, p_rel, p_q, p_dm, p_dq, p_dx, p_states,
        L, R, K, gamma,
        s_xb, s_xt, s_xk, s_qb, s_qt, s_qk,  # dx shares item_kg's layout, dm/dq query's
        PER_STEP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i_b = tl.program_id(0)
        o_k, m_r, m_k, m_rk, o_rk, b_rel = _row_setup(p_rel, R, K, BLOCK_R, BLOCK_K)
        n = tl.load(p_len + i_b).to(tl.int32)
        p_state = p_states + i_b * L * R * K
        b_dV = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
        if not PER_STEP:  # the single read after the last valid step
            o_q = i_b * s_qb + o_k * s_qk
            b_dq, b_dV = _read_bwd(tl.load(p_state + (n - 1) * R * K + o_rk, mask=m_rk, other=0.0), b_rel,
                                   tl.load(p_q + o_q, mask=m_k, other=0.0), tl.load(p_dm + o_q, mask=m_k, other=0.0),
                                   gamma, m_r)
            tl.store(p_dq + o_q, b_dq, mask=m_k)
        for t in range(n, L):  # padding steps: no gradient
            tl.store(p_dx + i_b * s_xb + t * s_xt + o_k * s_xk, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
            if PER_STEP:
                tl.store(p_dq + i_b * s_qb + t * s_qt + o_k * s_qk, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
        for i in range(0, n):
            t = n - 1 - i
            if PER_STEP:  # the read after step t
                o_q = i_b * s_qb + t * s_qt + o_k * s_qk
                b_dq, b_dV_read = _read_bwd(tl.load(p_state + t * R * K + o_rk, mask=m_rk, other=0.0), b_rel,
                                            tl.load(p_q + o_q, mask=m_k, other=0.0),
                                            tl.load(p_dm + o_q, mask=m_k, other=0.0), gamma, m_r)
                tl.store(p_dq + o_q, b_dq, mask=m_k)
                b_dV += b_dV_read
            # the write at step t
            b_Vp = tl.load(p_state + (t - 1) * R * K + o_rk, mask=m_rk & (tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.int32) + t > 0), other=0.0)  # V_{t-1}
            o_x = i_b * s_xb + t * s_xt + o_k * s_xk
            b_E = tl.where(m_rk, tl.load(p_x + o_x, mask=m_k, other=0.0)[None, :] + b_rel, 0.0)
            b_z = tl.sigmoid(tl.sum(b_Vp * b_E, axis=1))
            b_dg = tl.sum(b_dV * (b_E - b_Vp), axis=1) * b_z * (1 - b_z)
            tl.store(p_dx + o_x, tl.sum(b_z[:, None] * b_dV + b_dg[:, None] * b_Vp, axis=0), mask=m_k)
            b_dV = (1 - b_z)[:, None] * b_dV + b_dg[:, None] * b_E


def _blocks(R, K):
    return triton.next_power_of_2(R), triton.next_power_of_2(K)


def _forward(item_kg, lengths, relations, query, gamma, per_step, store_states, store_final):
    B, L, K = item_kg.shape
    R = relations.shape[0]
    out = _new(query.shape, item_kg)
    states = _new((B, L, R, K), item_kg) if store_states else out  # unused pointer otherwise
    final = _new((B, R, K), item_kg) if store_final else out
    BLOCK_R, BLOCK_K = _blocks(R, K)
    sq = query.stride() if per_step else (query.stride(0), 0, query.stride(1))
    so = out.stride() if per_step else (out.stride(0), 0, out.stride(1))
    _kv_memory_fwd_kernel[(B,)](
        item_kg, lengths, relations, query, out, states, final,
        L, R, K, float(gamma),
        *item_kg.stride(), *sq, *so,
        PER_STEP=per_step, STORE_STATES=store_states, STORE_FINAL=store_final,
        BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K,
    )
    return out, (states if store_states else None), (final if store_final else None)


def _backward(item_kg, lengths, relations, query, gamma, per_step, dm, states, final, need_dx):
    B, L, K = item_kg.shape
    R = relations.shape[0]
    dm = dm.contiguous().float()
    dq = _new(query.shape, item_kg)
    BLOCK_R, BLOCK_K = _blocks(R, K)
    sq = query.stride() if per_step else (query.stride(0), 0, query.stride(1))
    if need_dx:
        dx = _new(item_kg.shape, item_kg)
        _kv_memory_bwd_kernel[(B,)](
            item_kg, lengths, relations, query, dm, dq, dx, states, L, R, K, float(gamma),
            *item_kg.stride(), *sq, PER_STEP=per_step, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K)
        return dq, dx
    _kv_memory_bwd_query_kernel[(B,)](
        item_kg, lengths, relations, query, dm, dq, final if final is not None else dq, L, R, K, float(gamma),
        *item_kg.stride(), *sq, PER_STEP=per_step, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K)
    return dq, None


class KVMemoryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, item_kg, lengths, relations, query, gamma, per_step):
        need_dx = ctx.needs_input_grad[0]
        need_dq = ctx.needs_input_grad[3]
        out, states, final = _forward(item_kg, lengths, relations, query, gamma, per_step,
                                      store_states=need_dx, store_final=need_dq and not need_dx and not per_step)
        ctx.save_for_backward(item_kg, lengths, relations, query, states, final)
        ctx.gamma, ctx.per_step, ctx.need_dx = gamma, per_step, need_dx
        return out

    @staticmethod
    def backward(ctx, dm):
        item_kg, lengths, relations, query, states, final = ctx.saved_tensors
        dq, dx = _backward(item_kg, lengths, relations, query, ctx.gamma, ctx.per_step, dm, states, final, ctx.need_dx)
        return dx, None, None, dq, None, None


def fused_kv_memory(item_kg, lengths, relations, query, gamma, all_steps=False):
    """KSR's memory write and read, fused; the same function as ksr.kv_memory.

    item_kg   (B, L, K) float32  KG vector of the item at each step
    lengths   (B,) integer        valid steps per row, 1..L (steps >= length are padding)
    relations (R, K) float32      relation vectors, the memory keys (a constant: no gradient)
    query     (B, K)    all_steps=False -> m (B, K), the read after each row's last valid step
              (B, L, K) all_steps=True  -> m (B, L, K), the read after every step (0 at padding)
    gamma     float               attention sharpness
    Differentiable with respect to query and item_kg. All tensors on one CUDA device (or
    on the CPU under TRITON_INTERPRET=1, slowly).

    >>> m = fused_kv_memory(item_kg, lengths, relations, query, 10.0)   # doctest: +SKIP
    """
    _check(item_kg, lengths, relations, query, gamma, all_steps)
    return KVMemoryFunction.apply(item_kg.contiguous(), lengths.contiguous(), relations.contiguous(),
                                  query.contiguous(), float(gamma), bool(all_steps))


def unavailable_reason():
    """Why the kernel cannot run here, or None when it can."""
    import os
    if triton is None:
        return "triton is not installed (pip install triton; Linux only)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not torch.cuda.is_available():
        return "no CUDA GPU is available (set TRITON_INTERPRET=1 before importing triton to run the kernel on the CPU, slowly)"
    return None


def _check(item_kg, lengths, relations, query, gamma, all_steps):
    why = unavailable_reason()
    if why:
        raise RuntimeError(f"kernels.fused_kv_memory: {why}")
    if item_kg.dim() != 3:
        raise ValueError(f"kv_memory: item_kg must be (B, L, K), got shape {tuple(item_kg.shape)}")
    B, L, K = item_kg.shape
    if relations.dim() != 2 or relations.shape[1] != K:
        raise ValueError(f"kv_memory: relations must be (R, {K}), got shape {tuple(relations.shape)}")
    want = (B, L, K) if all_steps else (B, K)
    if query.shape != want:
        raise ValueError(f"kv_memory: with all_steps={bool(all_steps)} query must be {want}, got shape {tuple(query.shape)}")
    if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"kv_memory: lengths must be an integer tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}")
    for name, t in (("item_kg", item_kg), ("relations", relations), ("query", query)):
        if t.dtype != torch.float32:
            raise TypeError(f"kv_memory: {name} must be float32, got {t.dtype}")
    devices = {t.device for t in (item_kg, lengths, relations, query)}
    if len(devices) != 1:
        raise ValueError(f"kv_memory: all tensors must be on one device, got {sorted(map(str, devices))}")
    if relations.requires_grad:
        raise ValueError("kv_memory: relations are a constant in KSR; pass relations.detach() (no gradient is computed for them)")
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > L):
        raise ValueError(f"kv_memory: lengths must be in 1..{L}, got min {int(lengths.min())} max {int(lengths.max())}")
    if not math.isfinite(float(gamma)):
        raise ValueError(f"kv_memory: gamma must be finite, got {gamma}")
