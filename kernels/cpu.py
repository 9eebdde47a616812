"""KSR's recurrences (the GRU, the memory write), the memory read, the CE loss and the dropout mask as
compiled C++ loops (cpu.cpp): the cpp column of kernels/__init__.py's table, each proven equal to its
reference by tests/test_cpu_kernels.py (float64, values and gradients, any shape and thread count).

    cpu_gru_layer(x, w_ih, w_hh, lengths) -> (B, L, H)   one layer of ksr.GRU's nn.GRU, 0 at padding
    cpu_kv_memory(kg_seq, lengths, relations, query, gamma, all_steps)   ksr.kv_memory, frozen KG
    cpu_cross_entropy(p, q, targets)    ksr.cross_entropy, value and gradient in one pass
    CPUDropout(p)                       nn.Dropout's distribution, masks drawn on all threads

Why: torch runs a recurrence as many small operations per step, the read as ~8 more, and draws a
dropout mask on one thread. The large products stay in torch; cpu.cpp runs per step h_{t-1} W_hh^T
and the gates, rows spread over torch's threads. The library is compiled once (kernels/build.py) per
user and CPU; where no compiler works unavailable_reason() says why, and --kernels auto runs torch's.
"""
import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

import ksr

SOURCE, BUILD = Path(__file__).with_name("cpu.cpp"), Path(__file__).with_name("build.py")  # build.py: the flags
_lib, _why = None, None
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}  # the library's functions for each dtype


def _cpu_id(cpuinfo="/proc/cpuinfo"):
    """What -march=native depends on: the machine; on Linux the CPU's model and features (x86, ARM)."""
    info = ""
    with contextlib.suppress(OSError):
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            info = "".join(sorted({ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))}))
    return f"{platform.machine()} {platform.processor()} {info}"


def _library_path(cxx):
    """The library of this source, build recipe (build.py), compiler (its --version), $KSR_CXXFLAGS and CPU,
    in the user's cache ($KSR_CACHE_DIR, else $XDG_CACHE_HOME/ksr or ~/.cache/ksr)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.partition("\n")[0]
    recipe = f"{cxx} {version} {os.environ.get('KSR_CXXFLAGS', '')} {_cpu_id()}".encode()
    key = hashlib.sha256(SOURCE.read_bytes() + BUILD.read_bytes() + recipe).hexdigest()[:16]
    cache = os.environ.get("KSR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ksr"
    return Path(cache) / f"ksr_cpu-{key}.so"


def _load(log=None):
    """The compiled library (compiled now if not cached, said through `log`), or RuntimeError: why not."""
    global _lib, _why
    if _why:
        raise RuntimeError(_why)
    if _lib is not None:
        return _lib
    try:
        cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        if not cxx:
            raise RuntimeError("no C++ compiler (c++, g++, clang++ or $CXX) on this machine")
        path = _library_path(cxx)
        for attempt in range(2):
            if not path.exists():
                from .build import compile_library  # once per source, compiler and CPU: not on a cached run
                compile_library(cxx, SOURCE, path, log)
            try:
                lib = ctypes.CDLL(str(path))
                break
            except OSError as e:  # a library another user cached that we cannot read, or a damaged one: our own
                if attempt:
                    raise
                (log or print)(f"kernels: cannot load {path} ({e}); compiling one of this user's")
                path = path.with_name(f"{path.stem}-uid{getattr(os, 'getuid', lambda: 0)()}.so")
    except (OSError, RuntimeError) as e:
        _why = f"the compiled CPU kernels are unavailable: {e}"
        raise RuntimeError(_why) from None
    lib.ksr_pad.restype = ctypes.c_int
    lib.ksr_product_loop.argtypes = [ctypes.c_int64, ctypes.c_int]
    # each function's arguments, one letter each: i int64, p pointer, d double, u uint64, t the thread count
    kinds = dict(i=ctypes.c_int64, p=ctypes.c_void_p, d=ctypes.c_double, u=ctypes.c_uint64, t=ctypes.c_int)
    for name, args in dict(gru_forward="iiippppp", gru_backward="iiipppppp", memory_write="iiiippppp",
                           cross_entropy="iiipppdppp", memory_read="iiipppdpp", memory_read_backward="iiippppdp",
                           dropout_mask="idup").items():
        for suffix in ("f32", "f64"):
            getattr(lib, f"ksr_{name}_{suffix}").argtypes = [kinds[k] for k in args + "t"]
    _lib = lib
    return lib


def unavailable_reason(log=print):
    """None where the kernels run here (compiled first if needed, one line through `log`), else why not."""
    try:
        _load(log)
        return None
    except RuntimeError as e:
        return str(e)


def _padded(w, cols):
    """w (rows, c) with zero columns up to a multiple of cpu.cpp's PAD: its products read whole vectors."""
    pad = _load().ksr_pad()
    out = w.new_zeros(w.shape[0], -(-cols // pad) * pad)
    out[:, :w.shape[1]] = w
    return out


def _check(fn, floats, ints, shapes):
    """The C++ loops read raw pointers: every public function checks what it hands them, CPU tensors of one
    float dtype and the shapes {argument: shape, None any size}; else one ValueError naming the argument."""
    for name, t in {**floats, **ints}.items():
        if not torch.is_tensor(t) or t.device.type != "cpu":
            raise ValueError(f"{fn}: {name} must be a CPU tensor, got {t.device if torch.is_tensor(t) else type(t).__name__}")
    first, dtype = next(iter(floats)), next(iter(floats.values())).dtype
    for name, t in floats.items():
        if t.dtype not in (torch.float32, torch.float64) or t.dtype != dtype:
            raise ValueError(f"{fn}: {name} is {t.dtype}; the kernels take float32 or float64, one dtype ({first} is {dtype})")
    for name in (n for n, t in ints.items() if t.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"{fn}: {name} must be an integer tensor, got {ints[name].dtype}")
    for name, shape in shapes.items():
        t = {**floats, **ints}[name]
        if t.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, t.shape)):
            raise ValueError(f"{fn}: {name} must be of shape {tuple('*' if n is None else n for n in shape)}, "
                             f"got {tuple(t.shape)}")


def _check_lengths(name, lengths, L):
    if lengths.numel() and not (0 <= int(lengths.min()) and int(lengths.max()) <= L):
        raise ValueError(f"{name}: lengths must be in [0, {L}]")
    return lengths.to(torch.int64).contiguous()


# ----------------------------------------------------------------------------
# The GRU

class GRULayerFunction(torch.autograd.Function):
    """The recurrence: gi = x W_ih^T at the n valid steps, packed row after row (n, 3H), W_hh (3H, H),
    lengths (B,) with sum n, L -> out (B, L, H)."""

    @staticmethod
    def forward(ctx, gi, w_hh, lengths, L):
        lib, (B,), H = _load(), lengths.shape, w_hh.shape[1]
        gi = gi.contiguous()  # lengths: int64, contiguous (cpu_gru_layer checked them)
        out, saved = gi.new_zeros(B, L, H), gi.new_empty(5, gi.shape[0], H)  # saved: r, z, n, gh_n, h_{t-1}
        w_hh_t = _padded(w_hh.detach().T, 3 * H)  # (H, Gp)
        getattr(lib, f"ksr_gru_forward_{SUFFIX[gi.dtype]}")(B, L, H, gi.data_ptr(), w_hh_t.data_ptr(), lengths.data_ptr(),
                                                       out.data_ptr(), saved.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(saved, w_hh, lengths)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is not itself differentiable
    def backward(ctx, dout):
        saved, w_hh, lengths = ctx.saved_tensors
        lib, (B, L, H), n = _load(), dout.shape, saved.shape[1]
        dout = dout.contiguous()
        dgi, dgh = saved.new_empty(n, 3 * H), saved.new_empty(n, 3 * H)  # every packed step is written
        w_hh_p = _padded(w_hh.detach(), H)  # (3H, Hp)
        getattr(lib, f"ksr_gru_backward_{SUFFIX[saved.dtype]}")(B, L, H, dout.data_ptr(), saved.data_ptr(),
                                                           w_hh_p.data_ptr(), lengths.data_ptr(), dgi.data_ptr(),
                                                           dgh.data_ptr(), torch.get_num_threads())
        dw_hh = dgh.T @ saved[4]  # sum over the valid steps of dgh_t^T h_{t-1}: one product
        return dgi, dw_hh, None, None


def cpu_gru_layer(x, w_ih, w_hh, lengths):
    """One bias-free GRU layer over x (B, L, D) with nn.GRU's weights w_ih (3H, D), w_hh (3H, H):
    out (B, L, H) at the valid steps t < lengths (0 after). CPU tensors, float32 or float64.
    The input projection x W_ih^T (and its backward) is one product over the valid steps only."""
    floats, ints = dict(x=x, w_ih=w_ih, w_hh=w_hh), dict(lengths=lengths)
    _check("cpu_gru_layer", floats, ints, dict(x=(None,) * 3, w_hh=(None, None)))
    (B, L, D), H = x.shape, w_hh.shape[1]
    _check("cpu_gru_layer", floats, ints, dict(w_hh=(3 * H, H), w_ih=(3 * H, D), lengths=(B,)))
    lengths = _check_lengths("cpu_gru_layer", lengths, L)
    valid = (torch.arange(L) < lengths[:, None]).reshape(-1).nonzero().squeeze(1)  # packed row after row
    gi = x.reshape(B * L, D).index_select(0, valid) @ w_ih.T  # (n, 3H)
    return GRULayerFunction.apply(gi, w_hh, lengths, L)


# ----------------------------------------------------------------------------
# The memory

@torch.no_grad()
def cpu_memory_write(kg_seq, lengths, relations, all_steps=False):
    """ksr.memory_write without autograd (a frozen KG): V (B, R, K), or with all_steps=True the
    memory after every step (B, L, R, K) (0 at padding steps)."""
    floats, ints = dict(kg_seq=kg_seq, relations=relations), dict(lengths=lengths)
    _check("cpu_memory_write", floats, ints, dict(kg_seq=(None,) * 3, relations=(None, None), lengths=(None,)))
    _check("cpu_memory_write", floats, ints, dict(relations=(None, kg_seq.shape[2]), lengths=(len(kg_seq),)))
    (B, L, K), R = kg_seq.shape, relations.shape[0]
    kg_seq, relations = kg_seq.contiguous(), relations.contiguous()
    lengths = _check_lengths("cpu_memory_write", lengths, L)
    V = kg_seq.new_empty(B, R, K)
    states = kg_seq.new_zeros(B, L, R, K) if all_steps else None
    getattr(_load(), f"ksr_memory_write_{SUFFIX[kg_seq.dtype]}")(B, L, R, K, kg_seq.data_ptr(), lengths.data_ptr(),
                                                           relations.data_ptr(), V.data_ptr(),
                                                           states.data_ptr() if all_steps else None,
                                                           torch.get_num_threads())
    return states if all_steps else V


class MemoryReadFunction(torch.autograd.Function):
    """ksr.memory_read of a constant V (..., R, K), keys (R, K), query s (..., K); its gradient towards s only."""

    @staticmethod
    def forward(ctx, V, relations, query, gamma):
        lib, (R, K) = _load(), relations.shape
        V, relations, query = V.contiguous(), relations.contiguous(), query.contiguous()
        M = query.numel() // K
        m, w = query.new_empty(query.shape), query.new_empty(M, R)
        getattr(lib, f"ksr_memory_read_{SUFFIX[V.dtype]}")(M, R, K, V.data_ptr(), relations.data_ptr(), query.data_ptr(),
                                                      float(gamma), m.data_ptr(), w.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(V, relations, w)
        ctx.gamma = float(gamma)
        return m

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dm):
        V, relations, w = ctx.saved_tensors
        (M, R), K = w.shape, relations.shape[1]
        dm = dm.contiguous()
        ds = dm.new_empty(dm.shape)
        getattr(_load(), f"ksr_memory_read_backward_{SUFFIX[V.dtype]}")(M, R, K, V.data_ptr(), relations.data_ptr(),
                                                                   w.data_ptr(), dm.data_ptr(), ctx.gamma,
                                                                   ds.data_ptr(), torch.get_num_threads())
        return None, None, ds, None


def cpu_kv_memory(kg_seq, lengths, relations, query, gamma, all_steps=False):
    """ksr.kv_memory, same signature and result, for a frozen KG: the write and the read compiled,
    the gradient towards the query only. (A trained KG's write needs a backward: kernels.choose
    gives that model sorted_kv_memory.)"""
    floats = dict(kg_seq=kg_seq, relations=relations, query=query)
    _check("cpu_kv_memory", floats, dict(lengths=lengths), dict(kg_seq=(None,) * 3))
    if kg_seq.requires_grad or relations.requires_grad:
        raise ValueError("cpu_kv_memory: a frozen KG only (kg_seq and relations need no gradient); "
                         "use kernels.fast_torch.sorted_kv_memory")
    B, L, K = kg_seq.shape  # the compiled read reads V at every query: it must be V's shape
    _check("cpu_kv_memory", floats, dict(lengths=lengths), dict(query=(B, L, K) if all_steps else (B, K)))
    if not math.isfinite(float(gamma)):
        raise ValueError(f"cpu_kv_memory: gamma must be finite, got {gamma}")
    return MemoryReadFunction.apply(cpu_memory_write(kg_seq, lengths, relations, all_steps), relations, query, gamma)


# ----------------------------------------------------------------------------
# Dropout

class CPUDropout(torch.nn.Dropout):
    """nn.Dropout(p) with its mask made by cpu.cpp (4.) on all threads, from a stream whose seed is drawn
    from torch's generator (torch.manual_seed fixes every mask): nn.Dropout's distribution, not its
    draws; nn.Dropout's own forward where this one does not apply."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.p == 1 or self.inplace or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return super().forward(x)
        return x * dropout_mask(x.shape, self.p, x.dtype)


def dropout_mask(shape, p, dtype=torch.float32):
    """The scaled mask (shape): 1 / (1 - p) with probability 1 - p, else 0; p in [0, 1)."""
    if not 0 <= p < 1 or dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dropout_mask: p must be in [0, 1) and dtype float32 or float64, got {p}, {dtype}")
    seed = int(torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64)) % 2 ** 64  # from torch's generator
    out = torch.empty(shape, dtype=dtype)
    getattr(_load(), f"ksr_dropout_mask_{SUFFIX[out.dtype]}")(out.numel(), float(p), seed, out.data_ptr(),
                                                         torch.get_num_threads())
    return out


# ----------------------------------------------------------------------------
# The loss

class CrossEntropyFunction(torch.autograd.Function):
    """ksr.cross_entropy: p (n, D), q (N + 1, D) with row 0 the padding item, targets (n,) in 1..N.
    The forward makes the gradient too (cpu.cpp, 3.): backward only scales it by g."""

    @staticmethod
    def forward(ctx, p, q, targets):
        lib, (n, D), N = _load(), p.shape, q.shape[0] - 1
        p, q1, t = p.contiguous(), q[1:].contiguous(), (targets - 1).contiguous()  # row j of q1 is item j + 1
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = p.new_empty(n)
        dp, dq = (p.new_empty(n, D), q.new_zeros(N + 1, D)) if grad else (None, None)
        getattr(lib, f"ksr_cross_entropy_{SUFFIX[p.dtype]}")(n, N, D, p.data_ptr(), t.data_ptr(), q1.data_ptr(), 1.0 / n,
                                                        loss.data_ptr(), dp.data_ptr() if grad else None,
                                                        dq[1:].data_ptr() if grad else None, torch.get_num_threads())
        ctx.grads = dp, dq
        return loss.mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if ctx.grads is None:  # handed out, scaled in place (no copy of the (N + 1, D) dq a step)
            raise RuntimeError("cpu_cross_entropy: a second backward through one loss: its gradient, made in the "
                               "forward, went to the first; compute the loss again (or use ksr.cross_entropy)")
        (dp, dq), ctx.grads = ctx.grads, None
        return dp.mul_(g), dq.mul_(g), None


def cpu_cross_entropy(p, q, targets):
    """ksr.cross_entropy, same signature and result: the CE over all items 1..N of p . q_i, mean over
    the n targets, its gradient made in the same pass (cpu.cpp, 3.). CPU, float32 or float64. Memory
    beside p and q: dp, dq, one (N, D) sum of dq per chunk of targets (at most 8, added in a fixed
    order: the same result on any thread count) and an (N, 64) block of scores per thread: at
    N = 1M items and D = 64 about 2 GB, and 0.2 GB more per thread (float32)."""
    floats, ints = dict(p=p, q=q), dict(targets=targets)
    _check("cpu_cross_entropy", floats, ints, dict(p=(None, None), q=(None, None), targets=(None,)))
    _check("cpu_cross_entropy", floats, ints, dict(q=(None, p.shape[1]), targets=(len(p),)))
    N = q.shape[0] - 1
    if len(targets) == 0:
        return ksr.cross_entropy(p, q, targets)  # no target: the reference's NaN, as F.cross_entropy gives
    if not (1 <= int(targets.min()) and int(targets.max()) <= N):
        raise ValueError(f"cpu_cross_entropy: targets must be items in 1..{N}")
    return CrossEntropyFunction.apply(p, q, targets.to(torch.int64))
