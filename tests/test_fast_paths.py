"""kernels/fast_torch.py: each fast path against ksr.py's reference, in float64, values and
gradients, on random shapes (lengths 1..L, padding, sizes that are not powers of two)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kernels
import ksr
from conftest import memory_inputs, random_batch, small_model

pytestmark = pytest.mark.usefixtures("float64")


@given(memory_inputs(max_len=12))
@settings(max_examples=60, deadline=None)
def test_memory_write_matches_reference(inputs):
    """The no-autograd sorted write (frozen KG), final memory or the memory after every step."""
    item_kg, lengths, relations, query, gamma, all_steps = inputs
    V = kernels.memory_write(item_kg, lengths, relations, all_steps)
    # (at padding steps V is 0, so the read there is 0, as the reference's)
    torch.testing.assert_close(ksr.memory_read(V, relations, query, gamma),
                               ksr.kv_memory(item_kg, lengths, relations, query, gamma, all_steps), rtol=1e-12, atol=1e-12)


@given(memory_inputs(max_len=10), st.booleans())
@settings(max_examples=60, deadline=None)
def test_sorted_kv_memory_matches_reference(inputs, trained_kg):
    """sorted_kv_memory (memory_write, MemoryWriteFunction's hand-written backward, or the
    reference for a trained KG read after every step) against autograd through kv_memory."""
    item_kg, lengths, relations, query, gamma, all_steps = inputs
    a, b = item_kg.clone().requires_grad_(trained_kg), item_kg.clone().requires_grad_(trained_kg)
    qa, qb = query.clone().requires_grad_(), query.clone().requires_grad_()
    got = kernels.sorted_kv_memory(a, lengths, relations, qa, gamma, all_steps)
    want = ksr.kv_memory(b, lengths, relations, qb, gamma, all_steps)
    torch.testing.assert_close(got, want)
    dm = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    inputs_a, inputs_b = [qa] + [a] * trained_kg, [qb] + [b] * trained_kg
    for x, y in zip(torch.autograd.grad((got * dm).sum(), inputs_a), torch.autograd.grad((want * dm).sum(), inputs_b)):
        torch.testing.assert_close(x, y)


@given(st.integers(1, 9), st.integers(1, 11), st.integers(1, 2), st.booleans(), st.integers(0, 2 ** 31))
@settings(max_examples=40, deadline=None)
def test_packed_gru_matches_nn_gru(B, L, layers, all_steps, seed):
    g = torch.Generator().manual_seed(seed)
    D, H = 5, 7
    gru = ksr.GRU(D, H, layers)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    x = torch.randn(B, L, D, generator=g, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    gru.packed = True
    out = gru(x, lengths, all_steps)
    gru.packed = False
    ref = gru(x2, lengths, all_steps)
    if all_steps:  # only valid steps are defined
        mask = (torch.arange(L)[None, :] < lengths[:, None])[..., None]
        out, ref = out * mask, ref * mask
    torch.testing.assert_close(out, ref)
    dout = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad((out * dout).sum(), [x] + list(gru.parameters()))
    want = torch.autograd.grad((ref * dout).sum(), [x2] + list(gru.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("freeze_kg", [True, False])
@pytest.mark.parametrize("no_memory", [False, True])
@pytest.mark.parametrize("all_steps", [False, True])
def test_default_model_equals_the_reference_model(freeze_kg, no_memory, all_steps):
    """The whole model: packed GRU + sorted memory (+ the memory written ahead of time, as
    train.py's cache does) == nn.GRU over every step + ksr.kv_memory, user vectors and the
    gradients of the loss."""
    fast = small_model(no_memory=no_memory, freeze_kg=freeze_kg)
    plain = small_model(no_memory=no_memory, freeze_kg=freeze_kg, memory_impl="reference")
    plain.load_state_dict(fast.state_dict())
    plain.gru.packed = False
    seq, lengths, targets = random_batch()
    if all_steps:
        targets = torch.randint(1, 14, seq.shape, generator=torch.Generator().manual_seed(2))
        targets[seq == 0] = 0
    pf, pp = fast(seq, lengths, all_steps), plain(seq, lengths, all_steps)
    valid = targets > 0
    torch.testing.assert_close(pf[valid], pp[valid])
    gf = torch.autograd.grad(fast.loss(pf, targets), [p for p in fast.parameters() if p.requires_grad])
    gp = torch.autograd.grad(plain.loss(pp, targets), [p for p in plain.parameters() if p.requires_grad])
    for a, b in zip(gf, gp):
        torch.testing.assert_close(a, b)
    if not no_memory and freeze_kg:  # the memory written ahead of time
        V = kernels.memory_write(fast.entity_embedding(seq), lengths, fast.relations, all_steps)
        torch.testing.assert_close(fast(seq, lengths, all_steps, V)[valid], pp[valid])
