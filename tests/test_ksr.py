"""ksr.py, the reference: the memory against an independent scalar loop from the paper,
padding, losses, the exact equivalence of the two training modes."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ksr
from conftest import memory_inputs, random_batch, small_model

pytestmark = pytest.mark.usefixtures("float64")


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


@given(memory_inputs())
@settings(max_examples=60, deadline=None)
def test_kv_memory_matches_naive_loop(inputs):
    item_kg, lengths, relations, query, gamma, all_steps = inputs
    got = ksr.kv_memory(item_kg, lengths, relations, query, gamma, all_steps)
    want = naive_memory(item_kg, lengths, relations, query, gamma)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@given(memory_inputs(), st.integers(1, 5))
@settings(max_examples=40, deadline=None)
def test_padding_never_changes_the_memory(inputs, extra):
    """Garbage in the padding tail changes nothing; the 2-D read equals the truncated sequence's."""
    item_kg, lengths, relations, query, gamma, all_steps = inputs
    padded = torch.cat([item_kg, 5 * torch.randn(item_kg.shape[0], extra, item_kg.shape[2])], 1)
    if not all_steps:
        torch.testing.assert_close(ksr.kv_memory(padded, lengths, relations, query, gamma),
                                   ksr.kv_memory(item_kg, lengths, relations, query, gamma))
        for b in range(len(lengths)):
            n = int(lengths[b])
            one = ksr.kv_memory(item_kg[b:b + 1, :n], lengths[b:b + 1], relations, query[b:b + 1], gamma)
            torch.testing.assert_close(one[0], ksr.kv_memory(item_kg, lengths, relations, query, gamma)[b])
    else:
        q = torch.cat([query, torch.randn(query.shape[0], extra, query.shape[2])], 1)
        out = ksr.kv_memory(padded, lengths, relations, q, gamma, all_steps=True)
        torch.testing.assert_close(out[:, :item_kg.shape[1]], ksr.kv_memory(item_kg, lengths, relations, query, gamma, all_steps=True))
        mask = torch.arange(out.shape[1])[None, :] >= lengths[:, None]
        assert torch.all(out[mask] == 0)


def test_all_steps_must_match_the_query():
    item_kg, lengths, relations = torch.randn(2, 3, 4), torch.tensor([1, 3]), torch.randn(5, 4)
    with pytest.raises(ValueError, match="all_steps=True needs a query of shape"):
        ksr.kv_memory(item_kg, lengths, relations, torch.randn(2, 4), 1.0, all_steps=True)
    with pytest.raises(ValueError, match="all_steps=False needs a query of shape"):
        ksr.kv_memory(item_kg, lengths, relations, torch.randn(2, 3, 4), 1.0)


def test_unfrozen_kg_gets_gradients():
    model = small_model(freeze_kg=False)
    seq, lengths, targets = random_batch()
    model(seq, lengths, targets)[1].backward()
    assert model.entity_embedding.weight.grad is not None
    assert model.entity_embedding.weight.grad[seq[0, 0]].abs().sum() > 0
    frozen = small_model(freeze_kg=True)
    frozen(seq, lengths, targets)[1].backward()
    assert frozen.entity_embedding.weight.grad is None


def test_ce_loss_is_softmax_over_real_items():
    model = small_model()
    seq, lengths, targets = random_batch()
    p, loss = model(seq, lengths, targets)
    scores = p @ model.item_representations().T  # (B, N + 1)
    logp = torch.log_softmax(scores[:, 1:], dim=1)  # the padding item is not a candidate
    want = -logp[torch.arange(len(targets)), targets - 1].mean()
    torch.testing.assert_close(loss, want)


def test_bpr_loss():
    model = small_model(loss_type="BPR")
    seq, lengths, targets = random_batch()
    neg = ksr.sample_negatives(targets, model.n_items, torch.Generator().manual_seed(0))
    p, loss = model(seq, lengths, targets, neg)
    q = model.item_representations()
    pos_s = (p * q[targets]).sum(1)
    neg_s = (p * q[neg]).sum(1)
    torch.testing.assert_close(loss, -torch.log(torch.sigmoid(pos_s - neg_s)).mean())


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
    s = model.full_scores(model(seq, lengths)[0])
    assert s.shape == (6, 14) and torch.all(s[:, 0] == float("-inf")) and torch.isfinite(s[:, 1:]).all()


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
    seq_loss = model(inputs, torch.tensor([L]), targets, negatives, all_steps=True)[1]
    prefix = []
    for t in range(1, L + 1):
        prefix.append(model(inputs[:, :t], torch.tensor([t]), targets[:, t - 1], negatives[:, t - 1])[1])
    torch.testing.assert_close(seq_loss, torch.stack(prefix).mean())
