"""kernels/fast_torch.py: each fast path against ksr.py's reference, in float64, values and
gradients, on random shapes (lengths 1..L, padding, sizes that are not powers of two)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kernels
import ksr
from conftest import assert_cross_entropy_matches_reference, memory_inputs, random_batch, small_model

pytestmark = pytest.mark.usefixtures("float64")


@given(memory_inputs(max_len=12))
@settings(max_examples=60, deadline=None)
def test_memory_write_matches_reference(inputs):
    """The no-autograd sorted write (frozen KG) is ksr.memory_write: the final memory, or the
    memory after every step (0 at padding steps in both)."""
    kg_seq, lengths, relations, _, _, all_steps = inputs
    got = kernels.fast_torch.sorted_memory_write(kg_seq, lengths, relations, all_steps)
    want = ksr.memory_write(kg_seq, lengths, relations, all_steps)
    print("max |diff|", (got - want).abs().max().item())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@given(memory_inputs(max_len=12, all_steps=False))
@settings(max_examples=60, deadline=None)
def test_memory_write_function_matches_reference(inputs):
    """MemoryWriteFunction's hand-written backward against autograd through ksr.memory_write."""
    kg_seq, lengths, relations, _, _, _ = inputs
    a, b = kg_seq.clone().requires_grad_(), kg_seq.clone().requires_grad_()
    got, want = kernels.fast_torch.SortedMemoryWriteFunction.apply(a, lengths, relations), ksr.memory_write(b, lengths, relations)
    torch.testing.assert_close(got, want)
    dV = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    ga, = torch.autograd.grad((got * dV).sum(), a)
    gb, = torch.autograd.grad((want * dV).sum(), b)
    print("max |grad diff|", (ga - gb).abs().max().item())
    torch.testing.assert_close(ga, gb)


@given(memory_inputs(max_len=10), st.booleans())
@settings(max_examples=60, deadline=None)
def test_sorted_kv_memory_matches_reference(inputs, trained_kg):
    """sorted_kv_memory (sorted_memory_write, SortedMemoryWriteFunction, or the reference for a trained KG
    read after every step) against autograd through ksr.kv_memory."""
    kg_seq, lengths, relations, query, gamma, all_steps = inputs
    a, b = kg_seq.clone().requires_grad_(trained_kg), kg_seq.clone().requires_grad_(trained_kg)
    qa, qb = query.clone().requires_grad_(), query.clone().requires_grad_()
    got = kernels.fast_torch.sorted_kv_memory(a, lengths, relations, qa, gamma, all_steps)
    want = ksr.kv_memory(b, lengths, relations, qb, gamma, all_steps)
    torch.testing.assert_close(got, want)
    dm = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    inputs_a, inputs_b = [qa] + [a] * trained_kg, [qb] + [b] * trained_kg
    for x, y in zip(torch.autograd.grad((got * dm).sum(), inputs_a), torch.autograd.grad((want * dm).sum(), inputs_b)):
        torch.testing.assert_close(x, y)


@given(st.integers(1, 40), st.integers(1, 30), st.integers(1, 9), st.floats(0.1, 30.0), st.integers(0, 2 ** 31))
@settings(max_examples=80, deadline=None)
def test_all_items_cross_entropy_matches_reference(n, N, D, scale, seed):
    """all_items_cross_entropy == ksr.cross_entropy (F.cross_entropy over items 1..N): the loss and
    d p, d q (row 0, the padding item, gets 0), large scores included."""
    g = torch.Generator().manual_seed(seed)
    p, q = torch.randn(n, D, generator=g) * scale, torch.randn(N + 1, D, generator=g)
    targets = torch.randint(1, N + 1, (n,), generator=g)
    c = torch.randn((), generator=g)  # an upstream gradient other than 1
    assert_cross_entropy_matches_reference(kernels.fast_torch.all_items_cross_entropy, p, q, targets, c)


def fast_set(name, freeze_kg):
    """The implementations train.build_model gives a model on the CPU with --kernels `name` ("torch", or
    "cpp", the default where a C++ compiler works: kernels/cpu.py), from kernels/__init__.py's table."""
    if name == "cpp" and (why := kernels.cpu.unavailable_reason()):
        pytest.skip(why)
    chosen = kernels.choose(name, "cpu", freeze_kg)
    return dict(memory=kernels.function("memory", chosen["memory"]), ce=kernels.function("ce", chosen["ce"]),
                gru_layer=kernels.function("gru", chosen["gru"]))


@pytest.mark.parametrize("fast_paths", ["torch", "cpp"])
@pytest.mark.parametrize("freeze_kg", [True, False])
@pytest.mark.parametrize("no_memory", [False, True])
@pytest.mark.parametrize("all_steps", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_default_model_equals_the_reference_model(fast_paths, freeze_kg, no_memory, all_steps, num_layers):
    """The whole model as train.py builds it (the sorted memory and all_items_cross_entropy, or by
    default on the CPU the compiled GRU, CE and memory write) == the reference model (ksr.py alone):
    user vectors, the loss and every gradient."""
    fast = small_model(no_memory=no_memory, freeze_kg=freeze_kg, num_layers=num_layers, **fast_set(fast_paths, freeze_kg))
    plain = small_model(no_memory=no_memory, freeze_kg=freeze_kg, num_layers=num_layers)
    plain.load_state_dict(fast.state_dict())
    seq, lengths, targets = random_batch()
    if all_steps:
        targets = torch.randint(1, 14, seq.shape, generator=torch.Generator().manual_seed(2))
        targets[seq == 0] = 0
    (pf, lf), (pp, lp) = fast(seq, lengths, targets, all_steps=all_steps), plain(seq, lengths, targets, all_steps=all_steps)
    valid = targets > 0
    torch.testing.assert_close(pf[valid], pp[valid])
    torch.testing.assert_close(lf, lp)
    gf = torch.autograd.grad(lf, [p for p in fast.parameters() if p.requires_grad])
    gp = torch.autograd.grad(lp, [p for p in plain.parameters() if p.requires_grad])
    for a, b in zip(gf, gp):
        torch.testing.assert_close(a, b)
