"""kernels/cpu.py (the compiled GRU, memory, CE and dropout) against their references: nn.GRU,
ksr.memory_write, ksr.kv_memory, ksr.cross_entropy (and nn.Dropout's distribution), in float64,
values and gradients, on random shapes (lengths 1..L with padding, hidden sizes that are not
multiples of the kernel's 16-column blocks, batches smaller than a tile, any thread count); and
what happens where no compiler works."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kernels
import ksr
from conftest import assert_cross_entropy_matches_reference, memory_inputs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(bool(kernels.cpu.unavailable_reason()), reason=str(kernels.cpu.unavailable_reason()))


def valid_mask(lengths, L):
    return (torch.arange(L)[None, :] < lengths[:, None])[..., None]  # (B, L, 1)


@st.composite
def gru_inputs(draw):
    B, L, D, H = draw(st.integers(1, 14)), draw(st.integers(1, 12)), draw(st.integers(1, 9)), draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    lengths = torch.tensor(draw(st.lists(st.integers(1, L), min_size=B, max_size=B)))
    gru = torch.nn.GRU(D, H, 1, bias=False, batch_first=True).double()
    with torch.no_grad():
        for w in gru.parameters():
            w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 0.5, 2.0])))
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    dout = torch.randn(B, L, H, generator=g, dtype=torch.float64) * valid_mask(lengths, L)  # padding: never read
    return gru, x, lengths, dout, draw(st.sampled_from([1, 2, 3]))


@given(gru_inputs())
@settings(max_examples=120, deadline=None)
def test_cpu_gru_layer_matches_nn_gru(inputs):
    """cpu_gru_layer == nn.GRU at every valid step, 0 at padding steps; d x, d W_ih, d W_hh equal
    under any upstream gradient on the valid steps; any number of threads."""
    gru, x, lengths, dout, threads = inputs
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = kernels.cpu.cpu_gru_layer(xa, gru.weight_ih_l0, gru.weight_hh_l0, lengths)
        ga = torch.autograd.grad((got * dout).sum(), [xa, gru.weight_ih_l0, gru.weight_hh_l0])
    finally:
        torch.set_num_threads(old)
    want = gru(xb)[0]
    gb = torch.autograd.grad((want * dout).sum(), [xb, gru.weight_ih_l0, gru.weight_hh_l0])
    mask = valid_mask(lengths, x.shape[1])
    # large weights make the recurrence ill-conditioned (rounding grows from step to step): 1e-11, not 1e-15
    torch.testing.assert_close(got * mask, want * mask, rtol=1e-10, atol=1e-11)
    assert (got[~mask.expand_as(got)] == 0).all()
    for a, b in zip(ga, gb):  # the same, and the gradients' scale sets atol
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11 * max(1.0, b.abs().max().item()))


def test_cpu_gru_layer_float32_and_threads():
    """At the default shapes in float32: nn.GRU's values to float32 rounding, and the result the
    same to the last bit on 1 and 2 threads (rows are independent: the split changes nothing)."""
    g = torch.Generator().manual_seed(0)
    gru = torch.nn.GRU(64, 128, 1, bias=False, batch_first=True)
    x = torch.randn(32, 50, 64, generator=g)
    lengths = torch.randint(1, 51, (32,), generator=g)
    mask = valid_mask(lengths, 50)
    old, outs = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(kernels.cpu.cpu_gru_layer(x, gru.weight_ih_l0, gru.weight_hh_l0, lengths))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0] * mask, gru(x)[0].detach() * mask, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("all_steps", [False, True])
def test_ksr_gru_with_cpu_layers_equals_nn_gru(all_steps):
    """ksr.GRU(layer=cpu_gru_layer) == ksr.GRU (nn.GRU) with 2 layers: h at the last valid step,
    or after every valid step; and the gradient of every weight."""
    torch.manual_seed(0)
    plain = ksr.GRU(5, 7, 2).double()
    fast = ksr.GRU(5, 7, 2, layer=kernels.cpu.cpu_gru_layer).double()
    fast.load_state_dict(plain.state_dict())
    x, lengths = torch.randn(6, 9, 5, dtype=torch.float64), torch.tensor([9, 1, 4, 9, 2, 7])
    hp, hf = plain(x, lengths, all_steps), fast(x, lengths, all_steps)
    w = torch.randn(hp.shape, dtype=torch.float64) * (valid_mask(lengths, 9) if all_steps else 1)
    if all_steps:
        hp, hf = hp * valid_mask(lengths, 9), hf * valid_mask(lengths, 9)
    torch.testing.assert_close(hf, hp, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((hf * w).sum(), list(fast.parameters())),
                    torch.autograd.grad((hp * w).sum(), list(plain.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@given(memory_inputs(max_len=9), st.sampled_from([1, 2, 3]))
@settings(max_examples=80, deadline=None)
def test_cpu_memory_write_matches_reference(inputs, threads):
    """kernels.cpu.cpu_memory_write == ksr.memory_write: the final memory, or the memory after every
    step (0 at padding steps), on any number of threads."""
    item_kg, lengths, relations, _, _, all_steps = inputs
    item_kg, relations = item_kg.double(), relations.double()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.cpu.cpu_memory_write(item_kg, lengths, relations, all_steps)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(got, ksr.memory_write(item_kg, lengths, relations, all_steps), rtol=1e-12, atol=1e-12)


@given(memory_inputs(max_len=9), st.sampled_from([1, 2, 3]))
@settings(max_examples=80, deadline=None)
def test_cpu_kv_memory_matches_reference(inputs, threads):
    """cpu_kv_memory == ksr.kv_memory for a frozen KG: the write and the compiled read, and the
    read's gradient towards the query, on any number of threads."""
    item_kg, lengths, relations, query, gamma, all_steps = (t.double() if torch.is_tensor(t) and t.is_floating_point()
                                                            else t for t in inputs)
    qa, qb = query.clone().requires_grad_(), query.clone().requires_grad_()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.cpu.cpu_kv_memory(item_kg, lengths, relations, qa, gamma, all_steps)
        c = torch.randn(got.shape, dtype=torch.float64)
        grad = torch.autograd.grad((got * c).sum(), qa)[0]
    finally:
        torch.set_num_threads(old)
    want = ksr.kv_memory(item_kg, lengths, relations, qb, gamma, all_steps)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, torch.autograd.grad((want * c).sum(), qb)[0], rtol=1e-10, atol=1e-11)


def test_cpu_kv_memory_float32_default_shapes():
    """At the default shapes (K = 64: whole vector lanes, rows of length 0 too) in float32: the
    reference's values and query gradient to float32 rounding, the same bits on 1 and 2 threads."""
    g = torch.Generator().manual_seed(3)
    B, L, R, K = 32, 50, 5, 64
    kg, rel = torch.randn(B, L, K, generator=g) * 0.2, torch.randn(R, K, generator=g) * 0.2
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    query, c = torch.randn(B, L, K, generator=g), torch.randn(B, L, K, generator=g)
    outs = []
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            q = query.clone().requires_grad_()
            m = kernels.cpu.cpu_kv_memory(kg, lengths, rel, q, 10.0, True)
            outs.append((m.detach(), torch.autograd.grad((m * c).sum(), q)[0]))
        finally:
            torch.set_num_threads(old)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    q = query.double().requires_grad_()
    want = ksr.kv_memory(kg.double(), lengths, rel.double(), q, 10.0, True)
    torch.testing.assert_close(outs[0][0], want.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0][1], torch.autograd.grad((want * c.double()).sum(), q)[0].float(),
                               rtol=1e-3, atol=1e-4)


@given(st.floats(0.01, 0.95), st.integers(1, 70000), st.sampled_from([1, 2, 3]), st.integers(0, 2 ** 31))
@settings(max_examples=40, deadline=None)
def test_cpu_dropout_is_nn_dropouts_distribution(p, n, threads, seed):
    """CPUDropout(p) in training: x * mask, the mask 1 / (1 - p) or 0, zeros at rate p (within 5
    standard deviations), the gradient the mask; the same draws for the same torch seed on any
    number of threads, and other draws on the next call."""
    x = torch.rand(n, dtype=torch.float64) + 0.5  # no zeros of its own
    drop = kernels.cpu.CPUDropout(p).train()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        xa = x.clone().requires_grad_()
        y = drop(xa)
        again = drop(x)
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        y1 = drop(x)
    finally:
        torch.set_num_threads(old)
    mask = y.detach() / x
    kept = mask != 0
    torch.testing.assert_close(mask[kept], torch.full_like(mask[kept], 1 / (1 - p)), rtol=1e-12, atol=0)
    zeros = (~kept).double().mean().item()
    assert abs(zeros - p) <= 5 * (p * (1 - p) / n) ** 0.5 + 1 / n
    assert torch.equal(y.detach(), y1)
    if n >= 64 and 0.05 < p < 0.95:  # two independent draws agree everywhere with probability < 1e-4
        assert not torch.equal(y.detach(), again)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(xa.grad, mask, rtol=1e-12, atol=0)


def test_cpu_dropout_positions_are_independent():
    """No pattern over positions: every tenth of a large mask and every column of a (rows, 64)
    one drops at rate p, and neighbours are uncorrelated (all within 5 standard deviations)."""
    torch.manual_seed(0)
    p, rows = 0.1, 20000
    zeros = (kernels.cpu.dropout_mask((rows, 64), p) == 0).double()
    for part in (zeros.reshape(10, -1).mean(1), zeros.mean(0)):
        n = zeros.numel() / len(part)
        assert ((part - p).abs() <= 5 * (p * (1 - p) / n) ** 0.5).all(), part
    flat = zeros.reshape(-1)
    both = (flat[1:] * flat[:-1]).mean().item()  # P(two neighbours dropped) = p^2 if independent
    assert abs(both - p * p) <= 5 * (p * p * (1 - p * p) / flat.numel()) ** 0.5


def test_cpu_dropout_eval_and_edge_probabilities():
    x = torch.randn(3, 4)
    assert kernels.cpu.CPUDropout(0.3).eval()(x) is x
    assert kernels.cpu.CPUDropout(0.0).train()(x) is x
    assert torch.equal(kernels.cpu.CPUDropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        kernels.cpu.CPUDropout(1.5)


def test_bad_input_is_refused():
    gru = torch.nn.GRU(3, 4, 1, bias=False, batch_first=True)
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 5\]"):
        kernels.cpu.cpu_gru_layer(torch.randn(2, 5, 3), gru.weight_ih_l0, gru.weight_hh_l0, torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="kg_seq is torch.bfloat16; the kernels take float32 or float64"):
        kernels.cpu.cpu_memory_write(torch.randn(1, 2, 3).bfloat16(), torch.tensor([2]), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"query must be of shape \(1, 2, 3\), got \(3, 2, 3\)"):
        kernels.cpu.cpu_kv_memory(torch.randn(1, 2, 3), torch.tensor([2]), torch.randn(2, 3), torch.randn(3, 2, 3), 1.0, True)
    with pytest.raises(ValueError, match=r"query must be of shape \(1, 2, 3\), got \(1, 3\)"):  # all_steps: (B, L, K)
        kernels.cpu.cpu_kv_memory(torch.randn(1, 2, 3), torch.tensor([2]), torch.randn(2, 3), torch.randn(1, 3), 1.0, True)
    with pytest.raises(ValueError, match="frozen KG only"):
        kernels.cpu.cpu_kv_memory(torch.randn(1, 2, 3, requires_grad=True), torch.tensor([2]), torch.randn(2, 3),
                              torch.randn(1, 3), 1.0)


def test_without_a_compiler_the_model_keeps_plain_torch(tmp_path):
    """No working compiler: one line says why, nothing half-built is left in the cache, and
    train.build_model gives the torch column: nn.GRU, sorted_kv_memory and nn.Dropout (a fresh process: the
    library is loaded once per process)."""
    code = ("import types, torch, kernels, train; print(kernels.cpu.unavailable_reason()); cfg = vars(train.parse_args([])); "
            "ds = types.SimpleNamespace(n_items=5, item_kg=torch.zeros(6, 64), relation_kg=torch.zeros(2, 64)); "
            "print(kernels.describe(train.build_model(cfg, ds).kernels))")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), KSR_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, check=True)
    why, fallback, path = out.stdout.splitlines()  # no compiler to run: nothing compiled
    assert why.startswith("the compiled CPU kernels are unavailable:") and "no-such-c++" in why
    assert fallback == f"kernels: {why}; the torch column runs instead"  # the run says why
    assert path.startswith("kernels: gru torch (nn.GRU), memory torch (sorted_kv_memory), ce torch (all_items_cross_entropy), "
                           "dropout torch (Dropout); ")
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")
    # a compiler that fails: its first error line is the reason
    fake = tmp_path / "bad-c++"
    fake.write_text("#!/bin/sh\necho 'fatal: this compiler refuses' >&2\nexit 1\n")
    fake.chmod(0o755)
    env["CXX"] = str(fake)
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, check=True)
    assert "could not compile cpu.cpp: fatal: this compiler refuses" in out.stdout.splitlines()[1]
    assert not os.listdir(tmp_path / "cache")  # the temporary output is removed


@given(st.integers(1, 130), st.integers(1, 60), st.integers(1, 70), st.sampled_from([0.1, 1.0, 30.0]),
       st.sampled_from([1, 2, 3]), st.integers(0, 2 ** 31))
@settings(max_examples=100, deadline=None)
def test_cpu_cross_entropy_matches_reference(n, N, D, scale, threads, seed):
    """cpu_cross_entropy == ksr.cross_entropy in float64: the loss and d p, d q (row 0, the padding
    item, gets 0) under an upstream gradient other than 1; targets across several of its 48-target
    blocks and chunks (n up to 130), item counts and widths that are not multiples of its 6-row
    and 16-column blocks, large scores, any thread count."""
    g = torch.Generator().manual_seed(seed)
    p, q = torch.randn(n, D, generator=g, dtype=torch.float64) * scale, torch.randn(N + 1, D, generator=g, dtype=torch.float64)
    targets = torch.randint(1, N + 1, (n,), generator=g)
    c = torch.randn((), generator=g, dtype=torch.float64)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = assert_cross_entropy_matches_reference(kernels.cpu.cpu_cross_entropy, p, q, targets, c)
    finally:
        torch.set_num_threads(old)
    with torch.no_grad():  # no gradient asked: the loss alone, the same
        torch.testing.assert_close(kernels.cpu.cpu_cross_entropy(p, q, targets), want.detach(), rtol=1e-12, atol=1e-12)


def test_cpu_cross_entropy_float32_and_threads():
    """At the default shapes in float32 (1,600 targets, 1,683 items, D = 64): the reference's loss
    and gradients to float32 rounding, and the same to the last bit on 1 and 2 threads (the
    chunks' dQ sums are added in a fixed order)."""
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(1600, 64, generator=g), torch.randn(1684, 64, generator=g) * 0.3
    targets = torch.randint(1, 1684, (1600,), generator=g)
    old, runs = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            pa, qa = p.clone().requires_grad_(), q.clone().requires_grad_()
            loss = kernels.cpu.cpu_cross_entropy(pa, qa, targets)
            runs.append((loss, *torch.autograd.grad(loss, [pa, qa])))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    pb, qb = p.clone().requires_grad_(), q.clone().requires_grad_()
    want = ksr.cross_entropy(pb, qb, targets)
    for a, b in zip(runs[0], (want, *torch.autograd.grad(want, [pb, qb]))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_cpu_cross_entropy_bad_input():
    p, q = torch.randn(3, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"targets must be items in 1\.\.5"):
        kernels.cpu.cpu_cross_entropy(p, q, torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match=r"targets must be items in 1\.\.5"):
        kernels.cpu.cpu_cross_entropy(p, q, torch.tensor([1, 6, 2]))
    with pytest.raises(ValueError, match=r"q is torch.float64; .* \(p is torch.float32\)"):
        kernels.cpu.cpu_cross_entropy(p, q.double(), torch.tensor([1, 2, 3]))
    assert kernels.cpu.cpu_cross_entropy(p[:0], q, torch.tensor([], dtype=torch.long)).isnan()  # as the reference
    assert kernels.cpu.cpu_cross_entropy(p * float("nan"), q, torch.tensor([1, 2, 3])).isnan()  # a NaN is not hidden


@pytest.mark.skipif(kernels.cpu.unavailable_reason() is not None or kernels.cpu._load().ksr_pad() != 32,
                    reason="the library here is the 32-byte (AVX2) build already")
def test_avx2_build_on_an_avx512_cpu(tmp_path):
    """On an AVX-512 CPU the tests above run the 64-byte build; the 32-byte one (what AVX2 CPUs
    get) is built here with -mno-avx512f and checked against the references too (a fresh process:
    one library per process)."""
    code = ("import torch, ksr, kernels; from kernels import cpu; assert cpu._load().ksr_pad() == 16\n"
            "torch.manual_seed(0); g = torch.nn.GRU(5, 37, 1, bias=False, batch_first=True).double()\n"
            "x = torch.randn(9, 7, 5, dtype=torch.float64, requires_grad=True); lengths = torch.tensor([7, 1, 3, 7, 2, 5, 6, 4, 7])\n"
            "mask = (torch.arange(7) < lengths[:, None])[..., None]\n"
            "a = cpu.cpu_gru_layer(x, g.weight_ih_l0, g.weight_hh_l0, lengths) * mask; b = g(x)[0] * mask\n"
            "torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)\n"
            "torch.testing.assert_close(torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0], rtol=1e-10, atol=1e-11)\n"
            "p, q, t = torch.randn(70, 19, dtype=torch.float64), torch.randn(41, 19, dtype=torch.float64), torch.randint(1, 41, (70,))\n"
            "torch.testing.assert_close(cpu.cpu_cross_entropy(p, q, t), ksr.cross_entropy(p, q, t), rtol=1e-12, atol=1e-12)\n"
            "kg, rel, s = torch.randn(3, 6, 11, dtype=torch.float64), torch.randn(4, 11, dtype=torch.float64), torch.randn(3, 6, 11, dtype=torch.float64)\n"
            "l = torch.tensor([6, 2, 4])\n"
            "torch.testing.assert_close(cpu.cpu_kv_memory(kg, l, rel, s, 3.0, True), ksr.kv_memory(kg, l, rel, s, 3.0, True), rtol=1e-12, atol=1e-12)\n"
            "print('ok')")
    env = dict(os.environ, KSR_CXXFLAGS="-mno-avx512f", KSR_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
