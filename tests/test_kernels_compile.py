"""The fused kernel compiled for real GPUs (sm_80: A100, sm_90: H100/H200) on a CPU-only machine.

The interpreter tests (test_kernels.py) execute the kernel's Python semantics; they do not
lower it. Here every launch the launchers of kernels/kv_memory.py make, over R = 1..128
relations and K = 9..512 (both read shapes, frozen and trained KG, so with and without the
stored states and the final memory), is captured instead of launched, bound by triton's own
launch-time specialisation (strides of 1, sizes divisible by 16), compiled with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` and assembled with
triton's ptxas (`ptxas -v`): each must compile without register spills and within the
architecture's shared memory, and the shapes the launcher refuses (_check_size) must be
those that spill. Launches that bind to the same code are compiled once.

The compiles run in a subprocess without TRITON_INTERPRET (conftest.py sets it for the
interpreter tests; under it @triton.jit makes interpreted functions that cannot be lowered).
`python tests/test_kernels_compile.py` prints the table alone.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Shared memory one block may use (the opt-in maximum, bytes): A100 163 KB, H100/H200 227 KB.
ARCHS = {80: 163 * 1024, 90: 227 * 1024}
# (R relations, K = --kg_embedding_size): the block sizes the launcher picks, from the smallest
# to the limit, with sizes that are and are not multiples of 16 (triton specialises on that);
# (R, K) pairs that bind to the same code are compiled once.
SHAPES = [
    (1, 16), (1, 256),                  # R = 1 (specialised to a constant): smallest block, longest row
    (3, 64), (3, 50),                   # ml-100k's attribute KG (genre, year, decade), default K and an odd one
    (5, 24), (8, 16), (12, 100),        # 4 warps, under 16 elements per thread
    (24, 64), (24, 50),                 # Freebase's ml-100k KG (kernels/bench.py's shape)
    (16, 128), (32, 64), (128, 16),     # 2048 elements: 4 warps
    (24, 128), (64, 64), (16, 256),     # 4096: 8 warps
    (64, 128), (48, 100), (32, 256), (24, 200), (128, 64), (100, 50),  # 8192 = MAX_BLOCK_ELEMENTS: 16 warps
    (64, 256), (48, 200), (128, 128), (100, 100),                      # 16384: refused by _check_size
]
L = 50  # the default max sequence length (strides L * K, K, 1)


# --- the worker: runs without TRITON_INTERPRET -------------------------------------------------

def capture_launches(kv, R, K):
    """Every (kernel, args, meta) the launchers make for an (R, K) memory: both read shapes,
    no gradient, the query's gradient alone (frozen KG), both gradients (trained KG)."""
    import torch
    launches = []
    kv._launch = lambda kernel, grid, args, meta: launches.append((kernel, args, meta))
    for per_step in (False, True):
        for need_dx, need_ds in ((False, False), (False, True), (True, True)):
            kg_seq = torch.zeros(2, L, K, requires_grad=need_dx)
            query = torch.zeros((2, L, K) if per_step else (2, K), requires_grad=need_ds)
            out = kv.KVMemoryFunction.apply(kg_seq, torch.ones(2, dtype=torch.int64), torch.zeros(R, K),
                                            query, 10.0, per_step)
            if need_dx or need_ds:
                out.sum().backward()
    return launches


def bind(kernel, args, meta, target):
    """The signature, constexprs, attributes and options triton's launcher would compile for these
    arguments (triton.runtime.jit.JITFunction.run, without a driver)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **meta)
    return kernel._pack_args(backend, dict(meta), bound_args, specialization, options)


def compile_one(job):
    """Compile one bound launch for one arch; registers, spills and shared memory from ptxas -v."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource
    import kernels.kv_memory as kv
    arch, name, signature, constexprs, attrs, options = job
    kernel = getattr(kv, name)
    t0 = time.perf_counter()
    try:
        k = triton.compile(ASTSource(kernel, signature, {tuple(c): v for c, v in constexprs}, {tuple(a): v for a, v in attrs}),
                           target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # a lowering or ptxas failure is a result: the test reports it
        lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()] or [""]
        why = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        return dict(error=f"{type(e).__name__}: {why[:300]}", seconds=time.perf_counter() - t0)
    ptxas = get_ptxas(arch).path  # the ptxas triton assembled this PTX with (its PTX version)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(k.asm["ptx"])
        log = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}", src,
                              "-o", src + ".o"], capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    smem = re.search(r"(\d+) bytes smem", log)
    if not (regs and spill):
        return dict(error=f"ptxas -v said: {log.strip()[:300]}", seconds=time.perf_counter() - t0)
    # the program id, widened to int64 before any offset is made of it: (i_b * L + t) * R * BLOCK_K passes 2^31
    # at B L R BLOCK_K >= 2^31 (paper scale, large batches)
    pid64 = re.search(r"(%\S+) = tt.get_program_id x : i32.*?arith.extsi \1 : i32 to i64", k.asm["ttir"], re.S)
    return dict(regs=int(regs.group(1)), spill_stores=int(spill.group(1)), spill_loads=int(spill.group(2)),
                shared=k.metadata.shared + (int(smem.group(1)) if smem else 0), seconds=time.perf_counter() - t0,
                int64_offsets=bool(pid64))


def variant_name(name, constexprs):
    kind = {"_kv_memory_fwd_kernel": "fwd", "_kv_memory_bwd_query_kernel": "bwd_s", "_kv_memory_bwd_kernel": "bwd"}[name]
    flags = [k for k in ("PER_STEP", "STORE_STATES", "STORE_FINAL") if constexprs.get(k)]
    return kind, "+".join(f.lower() for f in flags) or "-"


def worker(processes):
    """All distinct launches, compiled for every arch; JSON rows on stdout."""
    from multiprocessing import Pool
    from triton.backends.compiler import GPUTarget
    import kernels.kv_memory as kv
    jobs, rows = {}, []
    for R, K in SHAPES:
        BLOCK_R, BLOCK_K, num_warps = kv._launch_config(R, K)
        refused = BLOCK_R * BLOCK_K > kv.MAX_BLOCK_ELEMENTS
        for kernel, args, meta in capture_launches(kv, R, K):
            for arch in ARCHS:
                options, signature, constexprs, attrs = bind(kernel, args, meta, GPUTarget("cuda", arch, 32))
                named = {kernel.arg_names[c[0]]: v for c, v in constexprs.items()}
                key = json.dumps([arch, kernel.__name__, signature, sorted(map(list, constexprs.items())),
                                  sorted(map(list, attrs.items())), str(options)], default=str)
                if key not in jobs:
                    jobs[key] = (arch, kernel.__name__, signature, [(list(c), v) for c, v in constexprs.items()],
                                 [(list(a), v) for a, v in attrs.items()],
                                 {k: v for k, v in meta.items() if k in options.__dict__})
                    kind, flags = variant_name(kernel.__name__, named)
                    rows.append(dict(key=key, arch=arch, kernel=kind, flags=flags, R=R, K=K, BLOCK_R=BLOCK_R,
                                     BLOCK_K=BLOCK_K, num_warps=num_warps, refused=refused))
    t0 = time.perf_counter()
    with Pool(processes) as pool:
        results = pool.map(compile_one, [jobs[r["key"]] for r in rows], chunksize=1)
    for row, res in zip(rows, results):
        del row["key"]
        row.update(res)
    json.dump(dict(rows=rows, seconds=time.perf_counter() - t0, processes=processes), sys.stdout)


def table(rows):
    """Two small tables: registers per kernel variant and arch (the largest over the accepted
    blocks, and at 32 x 64, the block of kernels/bench.py's R = 24, K = 64), then per block the largest over
    the variants, with spills where there are any."""
    def regs(rs):
        if any("error" in r for r in rs):
            return "FAILS"
        spill = max(r["spill_stores"] + r["spill_loads"] for r in rs)
        return f"{max(r['regs'] for r in rs)}" + (f" +{spill}B spilled" if spill else "")
    variants = sorted({(r["kernel"], r["flags"]) for r in rows})
    lines = [f"{'kernel':<6} {'variant':<22}" + "".join(f" {f'sm_{a} @32x64':>14} {f'sm_{a} max':>10}" for a in ARCHS)]
    for kind, flags in variants:
        line = f"{kind:<6} {flags:<22}"
        for a in ARCHS:
            mine = [r for r in rows if (r["kernel"], r["flags"], r["arch"]) == (kind, flags, a) and not r["refused"]]
            at = [r for r in mine if (r["BLOCK_R"], r["BLOCK_K"]) == (32, 64)]
            line += f" {regs(at) if at else '-':>14} {regs(mine):>10}"
        lines.append(line)
    lines += ["", f"{'block':>8} {'warps':>5} {'maxnreg':>7}" + "".join(f" {f'sm_{a} regs':>18}" for a in ARCHS)]
    blocks = sorted({(r["BLOCK_R"], r["BLOCK_K"], r["num_warps"], r["refused"]) for r in rows},
                    key=lambda b: (b[0] * b[1], b[0]))
    for br, bk, nw, refused in blocks:
        line = f"{f'{br}x{bk}':>8} {nw:>5} {min(255, 65536 // (32 * nw)):>7}"
        for a in ARCHS:
            line += f" {regs([r for r in rows if (r['BLOCK_R'], r['BLOCK_K'], r['arch']) == (br, bk, a)]):>18}"
        lines.append(line + ("   refused by _check_size" if refused else ""))
    return "\n".join(lines)


def run_worker():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    res["wall"] = time.perf_counter() - t0
    return res


# --- the tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compiled():
    res = run_worker()
    print(f"\n{len(res['rows'])} distinct compiles ({len(ARCHS)} archs) in {res['wall']:.0f}s "
          f"on {res['processes']} processes\n" + table(res["rows"]))
    return res["rows"]


def test_every_launch_compiles_without_spills(compiled):
    accepted = [r for r in compiled if not r["refused"]]
    assert {r["kernel"] for r in accepted} == {"fwd", "bwd_s", "bwd"}
    assert {(r["BLOCK_R"], r["BLOCK_K"]) for r in accepted} >= {(64, 128), (32, 256), (1, 16)}
    bad = [r for r in accepted if "error" in r or r["spill_stores"] or r["spill_loads"] or r["shared"] > ARCHS[r["arch"]]]
    for r in bad:
        print("FAILS:", r)
    assert not bad, f"{len(bad)} of {len(accepted)} compiles fail, spill or exceed shared memory; first: {bad[0]}"


def test_offsets_are_int64(compiled):
    """Every kernel widens its program id to int64 before it makes an offset: a batch whose
    B x L x R x BLOCK_K passes 2^31 elements (paper scale, large batches) does not wrap around."""
    accepted = [r for r in compiled if not r["refused"] and "error" not in r]
    assert accepted and all(r["int64_offsets"] for r in accepted), [r for r in accepted if not r["int64_offsets"]][:1]


def test_refused_shapes_are_where_spills_start(compiled):
    """Each block size just past MAX_BLOCK_ELEMENTS fails or spills on some variant and arch,
    and fused_kv_memory refuses it before launching (one line naming the limit)."""
    import kernels.kv_memory as kv
    refused = {}
    for r in compiled:
        if r["refused"]:
            refused.setdefault((r["BLOCK_R"], r["BLOCK_K"]), []).append(r)
    assert refused, "no shape past the limit was compiled"
    for (br, bk), rs in refused.items():
        broken = [r for r in rs if "error" in r or r["spill_stores"] or r["spill_loads"]]
        print(f"{br}x{bk}: {len(broken)} of {len(rs)} compiles spill or fail")
        assert broken, f"{br}x{bk} is refused but every variant compiles without spills: the limit is too low"
        R, K = rs[0]["R"], rs[0]["K"]
        with pytest.raises(ValueError, match=rf"^kv_memory: R x K = {R} x {K} pads to a {br} x {bk} block, past "
                                             rf"the fused kernel's limit of {kv.MAX_BLOCK_ELEMENTS} elements"):
            kv._check_size(R, K)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        sys.path.insert(0, ROOT)
        worker(processes=os.cpu_count() or 1)
    else:
        res = run_worker()
        print(f"{len(res['rows'])} distinct compiles in {res['wall']:.0f}s\n" + table(res["rows"]))
