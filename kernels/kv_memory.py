"""KSR's key-value memory (write + read) as one fused Triton kernel, forward and backward.

Computes exactly ksr.kv_memory (the plain-torch reference, tests/test_kernels.py proves it),
with the same signature; KSR runs it with --kernels triton (kernels/__init__.py's table):
for each valid step t and relation a,
    E_a = e_t + r_a,   z_a = sigmoid(<V_a, E_a>),   V_a <- V_a + z_a (E_a - V_a)     (write)
    w = softmax(gamma * <s, r_a>) over a,   m = sum_a w_a V_a                           (read)
with V starting at zero; s is the read query (s_t in ksr.py and the README; the public
argument is `query`, and `st_` prefixes strides). One program per batch row keeps the
whole memory V (R x K) on chip for all L steps; no (B, L, R, K) tensor is ever made
unless kg_seq needs a gradient. R x K is bounded (MAX_BLOCK_ELEMENTS, see the launchers).

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
        """Offsets and masks of one (R, K) memory padded to (BLOCK_R, BLOCK_K), and the keys.

        A stored memory (states, final) has rows of BLOCK_K floats, offsets o_v, masked by
        row only (m_v): its loads and stores are whole aligned vectors whatever K is (fewer address
        registers), and its padded columns hold V's, which are 0 (E = e + r is 0 there).
        Padded rows (a >= R) are never stored; in registers they hold finite values that the
        read weighs by w_a = 0 and the backward by dV_a = 0."""
        o_r, o_k = tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_K)
        m_r, m_k = o_r < R, o_k < K
        o_v = o_r[:, None] * BLOCK_K + o_k[None, :]
        m_v = tl.broadcast_to(m_r[:, None], (BLOCK_R, BLOCK_K))
        b_rel = tl.load(p_rel + o_v, mask=m_v, other=0.0)  # relations padded to (R, BLOCK_K)
        return o_k, m_r, m_k, o_v, m_v, b_rel  # b_rel (BLOCK_R, BLOCK_K): the keys r_a, 0 when padded

    @triton.jit
    def _read(b_V, b_rel, b_s, gamma, m_r):
        """w = softmax(gamma s.r_a) over the R real relations, m = sum_a w_a V_a."""
        b_logit = gamma * tl.sum(b_rel * b_s[None, :], axis=1)
        b_logit = tl.where(m_r, b_logit, float("-inf"))
        b_w = tl.exp(b_logit - tl.max(b_logit, axis=0))
        b_w = b_w / tl.sum(b_w, axis=0)
        return tl.sum(b_w[:, None] * b_V, axis=0), b_w

    @triton.jit
    def _read_bwd(b_V, b_rel, b_s, b_dm, gamma, m_r):
        """Gradients of m = sum_a w_a V_a with w = softmax(gamma s.r): (ds, dV)."""
        _, b_w = _read(b_V, b_rel, b_s, gamma, m_r)
        b_dw = tl.sum(b_V * b_dm[None, :], axis=1)                 # dL/dw_a = <dm, V_a>
        b_dlogit = b_w * (b_dw - tl.sum(b_w * b_dw, axis=0))       # through the softmax
        b_ds = gamma * tl.sum(b_dlogit[:, None] * b_rel, axis=0)   # logit_a = gamma <s, r_a>
        return b_ds, b_w[:, None] * b_dm[None, :]                  # dL/dV_a = w_a dm

    @triton.jit
    def _kv_memory_fwd_kernel(
        # pointers
        p_x, p_len, p_rel, p_s, p_out, p_states, p_final,
        # sizes
        L, R, K, gamma,
        # strides (st_) of kg_seq (x), query (s) and out (o), in elements
        st_xb, st_xt, st_xk, st_sb, st_st, st_sk, st_ob, st_ot, st_ok,
        # compile-time switches and blocks
        PER_STEP: tl.constexpr, STORE_STATES: tl.constexpr, STORE_FINAL: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i_b = tl.program_id(0).to(tl.int64)  # every offset below in int64: B L R BLOCK_K may pass 2^31
        o_k, m_r, m_k, o_v, m_v, b_rel = _row_setup(p_rel, R, K, BLOCK_R, BLOCK_K)
        n = tl.load(p_len + i_b).to(tl.int32)
        b_V = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
        for t in range(0, n):
            b_e = tl.load(p_x + i_b * st_xb + t * st_xt + o_k * st_xk, mask=m_k, other=0.0)
            b_E = b_e[None, :] + b_rel  # attribute vectors (padded rows: see _row_setup)
            b_z = tl.sigmoid(tl.sum(b_V * b_E, axis=1))
            b_V = b_V + b_z[:, None] * (b_E - b_V)
            if STORE_STATES:  # V after step t, for the backward of a trainable kg_seq
                tl.store(p_states + (i_b * L + t) * R * BLOCK_K + o_v, b_V, mask=m_v)
            if PER_STEP:
                b_s = tl.load(p_s + i_b * st_sb + t * st_st + o_k * st_sk, mask=m_k, other=0.0)
                b_m, _ = _read(b_V, b_rel, b_s, gamma, m_r)
                tl.store(p_out + i_b * st_ob + t * st_ot + o_k * st_ok, b_m, mask=m_k)
        if PER_STEP:
            for t in range(n, L):  # padding steps read nothing
                tl.store(p_out + i_b * st_ob + t * st_ot + o_k * st_ok, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
        else:
            b_s = tl.load(p_s + i_b * st_sb + o_k * st_sk, mask=m_k, other=0.0)
            b_m, _ = _read(b_V, b_rel, b_s, gamma, m_r)
            tl.store(p_out + i_b * st_ob + o_k * st_ok, b_m, mask=m_k)
        if STORE_FINAL:
            tl.store(p_final + i_b * R * BLOCK_K + o_v, b_V, mask=m_v)

    # Backward. With V_t the memory after step t (V_{-1} = 0), g_a = <V_{t-1,a}, E_a>:
    #   read  m_t = sum_a w_a V_{t,a}, w = softmax(gamma s r^T):
    #         dw_a = <dm, V_{t,a}>,  dlogit_a = w_a (dw_a - sum_b w_b dw_b),
    #         ds = gamma sum_a dlogit_a r_a,  dV_{t,a} += w_a dm
    #   write V_t = V_{t-1} + z (E - V_{t-1}), z = sigmoid(g):
    #         dg_a = <dV_{t,a}, E_a - V_{t-1,a}> z_a (1 - z_a)
    #         dV_{t-1,a} = (1 - z_a) dV_{t,a} + dg_a E_a
    #         de_t = sum_a (z_a dV_{t,a} + dg_a V_{t-1,a})        (E_a = e_t + r_a)
    # Only the read depends on s, so when kg_seq needs no gradient (frozen KG) ds needs
    # V_t alone: the final V (stored by the forward) for a (B, K) query, a recomputing
    # forward sweep for a (B, L, K) query. When kg_seq needs a gradient we walk time in
    # reverse over the states the forward stored, one (R, K) memory per valid step, rows
    # padded to BLOCK_K: B * L * R * BLOCK_K floats (629 MB at B=2048, L=50, R=24, K=64). Recomputing them from
    # checkpoints would save that memory at the cost of a second forward; on a GPU with
    # HBM the stored states are cheaper, and the frozen-KG default never makes them.

    @triton.jit
    def _kv_memory_bwd_query_kernel(
        p_x, p_len, p_rel, p_s, p_dm, p_ds, p_final,
        L, R, K, gamma,
        st_xb, st_xt, st_xk, st_sb, st_st, st_sk,  # dm and ds share query's layout (made contiguous)
        PER_STEP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i_b = tl.program_id(0).to(tl.int64)  # every offset below in int64: B L R BLOCK_K may pass 2^31
        o_k, m_r, m_k, o_v, m_v, b_rel = _row_setup(p_rel, R, K, BLOCK_R, BLOCK_K)
        if PER_STEP:
            n = tl.load(p_len + i_b).to(tl.int32)
            b_V = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
            for t in range(0, n):  # recompute the writes, differentiate each read
                b_e = tl.load(p_x + i_b * st_xb + t * st_xt + o_k * st_xk, mask=m_k, other=0.0)
                b_E = b_e[None, :] + b_rel
                b_z = tl.sigmoid(tl.sum(b_V * b_E, axis=1))
                b_V = b_V + b_z[:, None] * (b_E - b_V)
                o_s = i_b * st_sb + t * st_st + o_k * st_sk
                b_ds, _ = _read_bwd(b_V, b_rel, tl.load(p_s + o_s, mask=m_k, other=0.0),
                                    tl.load(p_dm + o_s, mask=m_k, other=0.0), gamma, m_r)
                tl.store(p_ds + o_s, b_ds, mask=m_k)
            for t in range(n, L):
                tl.store(p_ds + i_b * st_sb + t * st_st + o_k * st_sk, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
        else:
            b_V = tl.load(p_final + i_b * R * BLOCK_K + o_v, mask=m_v, other=0.0)
            o_s = i_b * st_sb + o_k * st_sk
            b_ds, _ = _read_bwd(b_V, b_rel, tl.load(p_s + o_s, mask=m_k, other=0.0),
                                tl.load(p_dm + o_s, mask=m_k, other=0.0), gamma, m_r)
            tl.store(p_ds + o_s, b_ds, mask=m_k)

    @triton.jit
    def _kv_memory_bwd_kernel(
        p_x, p_len, p_rel, p_s, p_dm, p_ds, p_dx, p_states,
        L, R, K, gamma,
        st_xb, st_xt, st_xk, st_sb, st_st, st_sk,  # dx shares kg_seq's layout, dm/ds query's
        PER_STEP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        i_b = tl.program_id(0).to(tl.int64)  # every offset below in int64: B L R BLOCK_K may pass 2^31
        o_k, m_r, m_k, o_v, m_v, b_rel = _row_setup(p_rel, R, K, BLOCK_R, BLOCK_K)
        n = tl.load(p_len + i_b).to(tl.int32)
        p_state = p_states + i_b * L * R * BLOCK_K
        b_dV = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
        if not PER_STEP:  # the single read after the last valid step
            o_s = i_b * st_sb + o_k * st_sk
            b_ds, b_dV = _read_bwd(tl.load(p_state + (n - 1) * R * BLOCK_K + o_v, mask=m_v, other=0.0), b_rel,
                                   tl.load(p_s + o_s, mask=m_k, other=0.0), tl.load(p_dm + o_s, mask=m_k, other=0.0),
                                   gamma, m_r)
            tl.store(p_ds + o_s, b_ds, mask=m_k)
        for t in range(n, L):  # padding steps: no gradient
            tl.store(p_dx + i_b * st_xb + t * st_xt + o_k * st_xk, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
            if PER_STEP:
                tl.store(p_ds + i_b * st_sb + t * st_st + o_k * st_sk, tl.zeros([BLOCK_K], dtype=tl.float32), mask=m_k)
        for i in range(0, n):
            t = n - 1 - i
            if PER_STEP:  # the read after step t
                o_s = i_b * st_sb + t * st_st + o_k * st_sk
                b_ds, b_dV_read = _read_bwd(tl.load(p_state + t * R * BLOCK_K + o_v, mask=m_v, other=0.0), b_rel,
                                            tl.load(p_s + o_s, mask=m_k, other=0.0),
                                            tl.load(p_dm + o_s, mask=m_k, other=0.0), gamma, m_r)
                tl.store(p_ds + o_s, b_ds, mask=m_k)
                b_dV += b_dV_read
            # the write at step t
            b_Vp = tl.load(p_state + (t - 1) * R * BLOCK_K + o_v, mask=m_v & (tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.int32) + t > 0), other=0.0)  # V_{t-1}
            o_x = i_b * st_xb + t * st_xt + o_k * st_xk
            b_E = tl.load(p_x + o_x, mask=m_k, other=0.0)[None, :] + b_rel
            b_z = tl.sigmoid(tl.sum(b_Vp * b_E, axis=1))
            b_dg = tl.sum(b_dV * (b_E - b_Vp), axis=1) * b_z * (1 - b_z)
            tl.store(p_dx + o_x, tl.sum(b_z[:, None] * b_dV + b_dg[:, None] * b_Vp, axis=0), mask=m_k)
            b_dV = (1 - b_z)[:, None] * b_dV + b_dg[:, None] * b_E


# Launch configuration. Each program holds the (R, K) memory and the keys, padded to
# (BLOCK_R, BLOCK_K), in registers, with the few (R, K) temporaries of a step (the backward
# through stored states holds about five). About 16 elements of each per thread keeps them
# there: 4 warps up to 2048 elements, then more warps, up to 16 (512 threads, whose share of
# an SM's 65536 registers is 128 each: maxnreg says so, else ptxas may stop at 64 and spill).
# Past MAX_BLOCK_ELEMENTS the backward spills even at 16 or 32 warps, so _check_size refuses
# it. tests/test_kernels_compile.py compiles every launch for sm_80 and sm_90 with ptxas and
# asserts no spills below the limit and spills just past it.
MAX_BLOCK_ELEMENTS = 64 * 128


def _next_power_of_2(n):
    return 1 << max(int(n) - 1, 0).bit_length()


def _launch_config(R, K):
    """(BLOCK_R, BLOCK_K, num_warps) for an (R, K) memory."""
    BLOCK_R, BLOCK_K = _next_power_of_2(R), _next_power_of_2(K)
    num_warps = min(16, max(4, BLOCK_R * BLOCK_K // (32 * 16)))
    return BLOCK_R, BLOCK_K, num_warps


def _meta(R, K):
    """The launch's compile-time arguments: blocks, warps and each thread's register budget."""
    BLOCK_R, BLOCK_K, num_warps = _launch_config(R, K)
    return dict(BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K, num_warps=num_warps, maxnreg=min(255, 65536 // (32 * num_warps)))


def _launch(kernel, grid, args, meta):
    """The one place a kernel is launched (tests/test_kernels_compile.py captures it to
    compile the same arguments for a GPU it does not have)."""
    kernel[grid](*args, **meta)


def _forward(kg_seq, lengths, relations, query, gamma, per_step, store_states, store_final):
    B, L, K = kg_seq.shape
    R = relations.shape[0]
    out = _new(query.shape, kg_seq)
    meta = _meta(R, K)
    BLOCK_K = meta["BLOCK_K"]
    states = _new((B, L, R, BLOCK_K), kg_seq) if store_states else out  # unused pointer otherwise
    final = _new((B, R, BLOCK_K), kg_seq) if store_final else out
    st_s = query.stride() if per_step else (query.stride(0), 0, query.stride(1))
    st_o = out.stride() if per_step else (out.stride(0), 0, out.stride(1))
    _launch(_kv_memory_fwd_kernel, (B,), (
        kg_seq, lengths, relations, query, out, states, final,
        L, R, K, float(gamma),
        *kg_seq.stride(), *st_s, *st_o,
    ), dict(meta, PER_STEP=per_step, STORE_STATES=store_states, STORE_FINAL=store_final))
    return out, (states if store_states else None), (final if store_final else None)


def _backward(kg_seq, lengths, relations, query, gamma, per_step, dm, states, final, need_dx):
    B, L, K = kg_seq.shape
    R = relations.shape[0]
    dm = dm.contiguous().float()
    ds = _new(query.shape, kg_seq)
    meta = dict(_meta(R, K), PER_STEP=per_step)
    st_s = query.stride() if per_step else (query.stride(0), 0, query.stride(1))
    if need_dx:
        dx = _new(kg_seq.shape, kg_seq)
        _launch(_kv_memory_bwd_kernel, (B,), (
            kg_seq, lengths, relations, query, dm, ds, dx, states, L, R, K, float(gamma),
            *kg_seq.stride(), *st_s), meta)
        return ds, dx
    _launch(_kv_memory_bwd_query_kernel, (B,), (
        kg_seq, lengths, relations, query, dm, ds, final if final is not None else ds, L, R, K, float(gamma),
        *kg_seq.stride(), *st_s), meta)
    return ds, None


class KVMemoryFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kg_seq, lengths, relations, query, gamma, per_step):
        need_dx = ctx.needs_input_grad[0]
        need_ds = ctx.needs_input_grad[3]
        K = kg_seq.shape[2]
        BLOCK_K = _launch_config(relations.shape[0], K)[1]
        relations = torch.nn.functional.pad(relations, (0, BLOCK_K - K))  # rows of BLOCK_K floats, as V's
        out, states, final = _forward(kg_seq, lengths, relations, query, gamma, per_step,
                                      store_states=need_dx, store_final=need_ds and not need_dx and not per_step)
        ctx.save_for_backward(kg_seq, lengths, relations, query, states, final)
        ctx.gamma, ctx.per_step, ctx.need_dx = gamma, per_step, need_dx
        return out

    @staticmethod
    def backward(ctx, dm):
        kg_seq, lengths, relations, query, states, final = ctx.saved_tensors
        ds, dx = _backward(kg_seq, lengths, relations, query, ctx.gamma, ctx.per_step, dm, states, final, ctx.need_dx)
        return dx, None, None, ds, None, None


def fused_kv_memory(kg_seq, lengths, relations, query, gamma, all_steps=False):
    """KSR's memory write and read, fused; the same function as ksr.kv_memory.

    kg_seq   (B, L, K) float32  KG vector of the item at each step
    lengths   (B,) integer        valid steps per row, 1..L (steps >= length are padding)
    relations (R, K) float32      relation vectors, the memory keys (a constant: no gradient)
    query     (B, K)    all_steps=False -> m (B, K), the read after each row's last valid step
              (B, L, K) all_steps=True  -> m (B, L, K), the read after every step (0 at padding)
    gamma     float               attention sharpness
    Differentiable with respect to query and kg_seq. All tensors on one CUDA device (or
    on the CPU under TRITON_INTERPRET=1, slowly).

    >>> m = fused_kv_memory(kg_seq, lengths, relations, query, 10.0)   # doctest: +SKIP
    """
    _check(kg_seq, lengths, relations, query, gamma, all_steps)
    return KVMemoryFunction.apply(kg_seq.contiguous(), lengths.contiguous(), relations.contiguous(),
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


def _check(kg_seq, lengths, relations, query, gamma, all_steps):
    why = unavailable_reason()
    if why:
        raise RuntimeError(f"kernels.fused_kv_memory: {why}")
    if kg_seq.dim() != 3:
        raise ValueError(f"kv_memory: kg_seq must be (B, L, K), got shape {tuple(kg_seq.shape)}")
    B, L, K = kg_seq.shape
    if relations.dim() != 2 or relations.shape[1] != K:
        raise ValueError(f"kv_memory: relations must be (R, {K}), got shape {tuple(relations.shape)}")
    want = (B, L, K) if all_steps else (B, K)
    if query.shape != want:
        raise ValueError(f"kv_memory: with all_steps={bool(all_steps)} query must be {want}, got shape {tuple(query.shape)}")
    if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"kv_memory: lengths must be an integer tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}")
    for name, t in (("kg_seq", kg_seq), ("relations", relations), ("query", query)):
        if t.dtype != torch.float32:
            raise TypeError(f"kv_memory: {name} must be float32, got {t.dtype}")
    devices = {t.device for t in (kg_seq, lengths, relations, query)}
    if len(devices) != 1:
        raise ValueError(f"kv_memory: all tensors must be on one device, got {sorted(map(str, devices))}")
    if relations.requires_grad:
        raise ValueError("kv_memory: relations are a constant in KSR; pass relations.detach() (no gradient is computed for them)")
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > L):
        raise ValueError(f"kv_memory: lengths must be in 1..{L}, got min {int(lengths.min())} max {int(lengths.max())}")
    if not math.isfinite(float(gamma)):
        raise ValueError(f"kv_memory: gamma must be finite, got {gamma}")
    _check_size(relations.shape[0], K)


def _check_size(R, K):
    """Refuse a memory too large for one program's registers (see MAX_BLOCK_ELEMENTS)."""
    BLOCK_R, BLOCK_K, _ = _launch_config(R, K)
    if BLOCK_R * BLOCK_K > MAX_BLOCK_ELEMENTS:
        raise ValueError(f"kv_memory: R x K = {R} x {K} pads to a {BLOCK_R} x {BLOCK_K} block, past the fused kernel's "
                         f"limit of {MAX_BLOCK_ELEMENTS} elements (BLOCK_R * BLOCK_K; more would spill registers); "
                         f"use --kernels torch")
