"""ksr.py: the memory against an independent naive loop, the packed GRU against nn.GRU,
masking, losses."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ksr



@pytest.fixture(autouse=True, scope="module")
def float64():
    """Reference checks in float64, for this module only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def naive_memory(item_kg, lengths, relations, query, gamma):
    """Scalar loops straight from the paper, nothing shared with ksr.kv_memory."""
    B, L, K = item_kg.shape
    R = relations.shape[0]
    out = torch.zeros(B, L, K) if query.dim() == 3 else torch.zeros(B, K)
    for b in range(B):
        V = [torch.zeros(K) for _ in range(R)]

        def read(q):
            logits = [gamma * float(q @ relations[a]) for a in range(R)]
            mx = max(logits)
            w = [math.exp(x - mx) for x in logits]
            return sum(w[a] / sum(w) * V[a] for a in range(R))

        for t in range(int(lengths[b])):
            for a in range(R):
                E = item_kg[b, t] + relations[a]
                z = 1 / (1 + math.exp(-float(V[a] @ E)))
                V[a] = (1 - z) * V[a] + z * E
            if query.dim() == 3:
                out[b, t] = read(query[b, t])
        if query.dim() == 2:
            out[b] = read(query[b])
    return out


@st.composite
def memory_inputs(draw, max_len=7, per_step=None):
    """Random memory inputs; per_step None draws the query shape, False/True fixes it."""
    B, L = draw(st.integers(1, 4)), draw(st.integers(1, max_len))
    R, K = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2 ** 31))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(draw(st.lists(st.integers(1, L), min_size=B, max_size=B)))
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)
    item_kg, relations = unit(B, L, K), unit(R, K)
    three_d = draw(st.booleans()) if per_step is None else per_step
    query = unit(B, L, K) if three_d else unit(B, K)
    gamma = draw(st.floats(0, 20))
    return item_kg, lengths, relations, query, gamma


@given(memory_inputs())
@settings(max_examples=60, deadline=None)
def test_kv_memory_matches_naive_loop(inputs):
    item_kg, lengths, relations, query, gamma = inputs
    got = ksr.kv_memory(item_kg, lengths, relations, query, gamma)
    want = naive_memory(item_kg, lengths, relations, query, gamma)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@given(memory_inputs(), st.integers(1, 5))
@settings(max_examples=40, deadline=None)
def test_padding_never_changes_the_memory(inputs, extra):
    """Garbage in the padding tail changes nothing; the 2-D read equals the truncated sequence's."""
    item_kg, lengths, relations, query, gamma = inputs
    padded = torch.cat([item_kg, 5 * torch.randn(item_kg.shape[0], extra, item_kg.shape[2])], 1)
    if query.dim() == 2:
        torch.testing.assert_close(ksr.kv_memory(padded, lengths, relations, query, gamma),
                                   ksr.kv_memory(item_kg, lengths, relations, query, gamma))
        for b in range(len(lengths)):
            n = int(lengths[b])
            one = ksr.kv_memory(item_kg[b:b + 1, :n], lengths[b:b + 1], relations, query[b:b + 1], gamma)
            torch.testing.assert_close(one[0], ksr.kv_memory(item_kg, lengths, relations, query, gamma)[b])
    else:
        q = torch.cat([query, torch.randn(query.shape[0], extra, query.shape[2])], 1)
        out = ksr.kv_memory(padded, lengths, relations, q, gamma)
        torch.testing.assert_close(out[:, :item_kg.shape[1]], ksr.kv_memory(item_kg, lengths, relations, query, gamma))
        mask = torch.arange(out.shape[1])[None, :] >= lengths[:, None]
        assert torch.all(out[mask] == 0)


@given(memory_inputs(max_len=12, per_step=False))
@settings(max_examples=60, deadline=None)
def test_memory_write_matches_reference(inputs):
    item_kg, lengths, relations, query, gamma = inputs
    V = ksr.memory_write(item_kg, lengths, relations)
    torch.testing.assert_close(ksr.memory_read(V, relations, query, gamma),
                               ksr.kv_memory(item_kg, lengths, relations, query, gamma), rtol=1e-12, atol=1e-12)


@given(st.integers(1, 9), st.integers(1, 11), st.integers(1, 2), st.booleans(), st.integers(0, 2 ** 31))
@settings(max_examples=40, deadline=None)
def test_packed_gru_matches_nn_gru(B, L, layers, all_steps, seed):
    g = torch.Generator().manual_seed(seed)
    E, H = 5, 7
    gru = ksr.GRU(E, H, layers)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    x = torch.randn(B, L, E, generator=g, requires_grad=True)
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


def small_model(no_memory=False, freeze_kg=True, loss_type="CE", seed=0, n_items=13, R=4, K=6):
    torch.manual_seed(seed)
    item_kg = torch.nn.functional.normalize(torch.randn(n_items + 1, K), dim=-1)
    item_kg[0] = 0
    rel = torch.nn.functional.normalize(torch.randn(R, K), dim=-1)
    return ksr.KSR(n_items, item_kg, rel, embedding_size=8, hidden_size=10, dropout_prob=0.0,
                   loss_type=loss_type, freeze_kg=freeze_kg, no_memory=no_memory).double()


def random_batch(n_items=13, B=6, L=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    seq = torch.randint(1, n_items + 1, (B, L), generator=g)
    seq[torch.arange(L)[None, :] >= lengths[:, None]] = 0
    return seq, lengths, torch.randint(1, n_items + 1, (B,), generator=g)


@pytest.mark.parametrize("freeze_kg", [True, False])
@pytest.mark.parametrize("no_memory", [False, True])
def test_fast_paths_equal_plain_padded_computation(freeze_kg, no_memory):
    """Packed GRU + memory_write/cache == nn.GRU over all steps + the step-by-step reference."""
    model = small_model(no_memory=no_memory, freeze_kg=freeze_kg)
    seq, lengths, targets = random_batch()
    fast = model(seq, lengths)
    model.gru.packed = False
    plain = model(seq, lengths)
    torch.testing.assert_close(fast, plain)
    if not no_memory and freeze_kg:
        V = model.write_memory(seq, lengths)
        torch.testing.assert_close(model(seq, lengths, V), plain)
        model.gru.packed = True
        p = model(seq, lengths)
        # the kv_memory reference path gives the same user vectors
        h = model.gru(model.item_embedding(seq), lengths)
        m = ksr.kv_memory(model.entity_embedding(seq), lengths, model.relations, model.dense(h), model.gamma)
        torch.testing.assert_close(p, model.dense_layer_u(torch.cat([h, m], -1)))


def test_unfrozen_kg_gets_gradients():
    model = small_model(freeze_kg=False)
    seq, lengths, targets = random_batch()
    model.loss(model(seq, lengths), targets).backward()
    assert model.entity_embedding.weight.grad is not None
    assert model.entity_embedding.weight.grad[seq[0, 0]].abs().sum() > 0
    frozen = small_model(freeze_kg=True)
    frozen.loss(frozen(seq, lengths), targets).backward()
    assert frozen.entity_embedding.weight.grad is None


def test_ce_loss_is_softmax_over_real_items():
    model = small_model()
    seq, lengths, targets = random_batch()
    p = model(seq, lengths)
    scores = p @ model.item_representations().T  # (B, N + 1)
    logp = torch.log_softmax(scores[:, 1:], dim=1)  # the padding item is not a candidate
    want = -logp[torch.arange(len(targets)), targets - 1].mean()
    torch.testing.assert_close(model.loss(p, targets), want)


def test_bpr_loss():
    model = small_model(loss_type="BPR")
    seq, lengths, targets = random_batch()
    p = model(seq, lengths)
    neg = ksr.sample_negatives(targets, model.n_items, torch.Generator().manual_seed(0))
    q = model.item_representations()
    pos_s = (p * q[targets]).sum(1)
    neg_s = (p * q[neg]).sum(1)
    torch.testing.assert_close(model.loss(p, targets, neg), -torch.log(torch.sigmoid(pos_s - neg_s)).mean())


@given(st.integers(2, 30), st.integers(0, 2 ** 31))
@settings(max_examples=50, deadline=None)
def test_negatives_are_uniform_over_other_items(n_items, seed):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(1, n_items + 1, (4000,), generator=g)
    neg = ksr.sample_negatives(targets, n_items, g)
    assert torch.all(neg != targets) and neg.min() >= 1 and neg.max() <= n_items
    # each other item is drawn with probability 1 / (n_items - 1)
    t = targets == 1
    counts = torch.bincount(neg[t], minlength=n_items + 1)[2:].double()
    expect = t.sum() / (n_items - 1)
    assert torch.all((counts - expect).abs() < 6 * expect.sqrt() + 3)


def test_full_scores_exclude_padding():
    model = small_model()
    seq, lengths, _ = random_batch()
    s = model.full_scores(model(seq, lengths))
    assert s.shape == (6, 14) and torch.all(s[:, 0] == float("-inf")) and torch.isfinite(s[:, 1:]).all()


@given(memory_inputs(max_len=10, per_step=False))
@settings(max_examples=50, deadline=None)
def test_memory_write_function_gradients_match_reference(inputs):
    """The hand-written backward (trainable KG) against autograd through kv_memory."""
    item_kg, lengths, relations, query, gamma = inputs
    a = item_kg.clone().requires_grad_()
    b = item_kg.clone().requires_grad_()
    qa, qb = query.clone().requires_grad_(), query.clone().requires_grad_()
    got = ksr.memory_read(ksr.MemoryWriteFunction.apply(a, lengths, relations), relations, qa, gamma)
    want = ksr.kv_memory(b, lengths, relations, qb, gamma)
    torch.testing.assert_close(got, want)
    dm = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    ga = torch.autograd.grad((got * dm).sum(), [a, qa])
    gb = torch.autograd.grad((want * dm).sum(), [b, qb])
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
@pytest.mark.parametrize("freeze_kg", [True, False])
def test_sequence_loss_equals_mean_of_prefix_losses(loss_type, freeze_kg):
    """One window from the user's first item, dropout off: the sequence-mode loss is the mean
    of the prefix-mode losses of its prefixes (the exact equivalence of the two modes)."""
    model = small_model(loss_type=loss_type, freeze_kg=freeze_kg)
    g = torch.Generator().manual_seed(3)
    L = 9
    window = torch.randint(1, 14, (1, L + 1), generator=g)  # items; the window reads L, predicts L
    inputs, targets = window[:, :L], window[:, 1:]
    negatives = ksr.sample_negatives(targets, model.n_items, g)
    seq_loss = model.loss(model(inputs, torch.tensor([L]), all_steps=True), targets, negatives)
    prefix = []
    for t in range(1, L + 1):
        p = model(inputs[:, :t], torch.tensor([t]))
        prefix.append(model.loss(p, targets[:, t - 1], negatives[:, t - 1]))
    torch.testing.assert_close(seq_loss, torch.stack(prefix).mean())
