"""data.py: atomic files, RecBole's sequential split, the KG and TransE."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import data
import transe
from extras import fetch, link_check
from conftest import TRANSE, read_line_by_line, write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, root, kg="files", keep_unlinked=False, kg_embedding_size=8, log=print):
    return data.load_dataset(name, root, kg, keep_unlinked, kg_embedding_size, 50, TRANSE, log=log)


# ---------------------------------------------------------------- the split

@st.composite
def interaction_logs(draw):
    n_users = draw(st.integers(1, 8))
    lengths = draw(st.lists(st.integers(1, 70), min_size=n_users, max_size=n_users))
    n_items = draw(st.integers(1, 30))
    users, items, times = [], [], []
    for u, n in enumerate(lengths, start=1):
        users += [u] * n
        items += draw(st.lists(st.integers(1, n_items), min_size=n, max_size=n))
        times += draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # many ties
    perm = draw(st.permutations(range(len(users))))
    pick = lambda xs: np.array([xs[i] for i in perm], dtype=np.int64)
    return pick(users), pick(items), pick(times).astype(float), lengths


@given(interaction_logs(), st.sampled_from([1, 3, 50]))
@settings(max_examples=150, deadline=None)
def test_split_matches_recbole_protocol(log, max_len):
    users, items, times, lengths = log
    seqs, splits = data.build_sequences(users, items, times, max_len)
    for u, n in enumerate(lengths, start=1):
        # stable sort by time: ties keep file order
        mask = users == u
        order = np.argsort(times[mask], kind="stable")
        expect = items[mask][order]
        assert np.array_equal(seqs[u], expect)
    # sample counts: n-1 per user, valid/test as RecBole's leave-one-out
    n_train = sum(n - 3 if n >= 4 else (1 if n in (2, 3) else 0) for n in lengths)
    assert len(splits["train"]) == n_train
    assert len(splits["valid"]) == sum(n >= 4 for n in lengths)
    assert len(splits["test"]) == sum(n >= 3 for n in lengths)
    for name, sp in splits.items():
        item_seq, lengths, targets = sp.cut(np.arange(len(sp)))
        for b in range(len(sp)):
            u, L = sp.users[b], lengths[b]
            seq = seqs[u]
            assert 1 <= L <= max_len
            assert np.all(item_seq[b, L:] == 0)
            row = item_seq[b, :L]
            # the input is the window of the `L` items just before the target
            ends = [t for t in range(1, len(seq)) if np.array_equal(seq[max(0, t - max_len):t], row) and seq[t] == targets[b]]
            assert ends, (name, b)
            if name == "test":
                assert np.array_equal(row, seq[:-1][-max_len:]) and targets[b] == seq[-1]
            if name == "valid":
                assert np.array_equal(row, seq[:-2][-max_len:]) and targets[b] == seq[-2]
    # every training sample is a strict earlier prefix: its target comes before valid's
    for b in range(len(splits["train"])):
        u = splits["train"].users[b]
        n = len(seqs[u])
        if n >= 4:
            assert splits["train"].lengths[b] <= min(max_len, n - 3)


def arrays_as_before(users, items, times, max_len, stride):
    """The (N, L) arrays data.py held before samples were cut per batch, built by the loops it
    had then: every prefix sample and window written out. The reference for the CSR splits."""
    order = np.lexsort((times, users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, np.diff(users) != 0])
    ends = np.r_[starts[1:], len(users)]
    parts, seqs = {"train": [], "valid": [], "test": []}, {}
    for s, e in zip(starts, ends):
        seqs[users[s]] = items[s:e]
        n_samples = e - s - 1
        n_eval = min(2, max(n_samples - 1, 0))
        for k in range(n_samples):
            name = "train" if k < n_samples - n_eval else ("valid" if n_eval == 2 and k == n_samples - 2 else "test")
            parts[name].append((users[s], items[s + max(0, k + 1 - max_len):s + k + 1], items[s + k + 1]))
    windows = []
    for u, seq in seqs.items():
        n_train = sum(1 for row in parts["train"] if row[0] == u)
        covered = s = 0
        while covered < n_train:
            e = min(s + max_len, n_train)
            tgt = seq[s + 1:e + 1].copy()
            tgt[:max(covered - s, 0)] = 0
            windows.append((u, seq[s:e], tgt))
            covered, s = e, s + stride
    parts["windows"] = windows
    out = {}
    for name, rows in parts.items():
        longest = max((len(r[1]) for r in windows), default=1) if name == "windows" else max(ends - starts) - 1
        L = max(1, min(max_len, longest))  # the three prefix splits share one width
        seq, tgt = np.zeros((len(rows), L), np.int64), np.zeros((len(rows), L), np.int64)
        for b, (_, inp, t) in enumerate(rows):
            seq[b, :len(inp)] = inp
            tgt[b, :np.size(t)] = t
        out[name] = (np.array([r[0] for r in rows], np.int64).reshape(-1), seq, np.array([len(r[1]) for r in rows], np.int64).reshape(-1),
                     tgt if name == "windows" else tgt[:, 0])
    return out


def splits_and_windows(log, max_len, draw):
    """build_sequences' splits and sequence_windows' windows (under "windows") at a drawn stride."""
    users, items, times, _ = log
    stride = draw.draw(st.integers(1, max_len))
    seqs, splits = data.build_sequences(users, items, times, max_len)
    splits["windows"] = data.sequence_windows(seqs, splits["train"], max_len, stride)
    return seqs, splits, stride


@given(interaction_logs(), st.integers(1, 12), st.data())
@settings(max_examples=150, deadline=None)
def test_cut_per_batch_gives_exactly_the_arrays_held_before(log, max_len, draw):
    users, items, times, _ = log
    seqs, splits, stride = splits_and_windows(log, max_len, draw)
    for name, (u, seq, lengths, targets) in arrays_as_before(users, items, times, max_len, stride).items():
        sp = splits[name]
        assert len(sp) == len(u) and np.array_equal(sp.users, u)
        rows = draw.draw(st.permutations(range(len(sp)))) if len(sp) else []  # any batch, any order
        for batch in np.array_split(np.array(rows, dtype=np.int64), max(1, len(rows) // 3)):
            got = sp.cut(batch)
            for a, b in zip(got, (seq, lengths, targets)):
                assert np.array_equal(a, b[batch]), name


@given(st.lists(st.integers(0, 40), max_size=200))
def test_renumber_numbers_codes_as_remap_numbers_tokens(codes):
    ids, vocab = data.remap([f"t{c}" for c in codes])
    ids2, first = data.renumber(np.array(codes, dtype=np.int64))
    assert np.array_equal(ids, ids2) and vocab[1:] == [f"t{c}" for c in first]


def test_arrow_reader_and_line_reader_agree(tmp_path):
    # ~3 MB: pyarrow parses it in several blocks (and threads); the line reader is the reference
    rng = np.random.default_rng(0)
    n = 150_000
    users = [f"u{x}" for x in rng.zipf(1.5, n) % 5000]
    items = [f"i {x}" for x in rng.integers(0, 900, n)]  # a token may hold a space
    ratings = rng.integers(1, 6, n)
    vecs = rng.standard_normal((n, 3)).astype(np.float32)
    lines = [f"{u}\t{i}\t{r}\t{v[0]:.9g} {v[1]:.9g}  {v[2]:.9g}" for u, i, r, v in zip(users, items, ratings, vecs)]
    lines.insert(70_000, "")  # blank lines are skipped by both
    path = _write(tmp_path / "x.inter", "user_id:token\titem_id:token\trating:float\tvec:float_seq\n" + "\n".join(lines) + "\r\n")
    fast = data.read_atomic(path)
    names, slow = read_line_by_line(path)
    for name in names:
        if isinstance(slow[name], data.Tokens):
            assert fast[name].vocab == slow[name].vocab and np.array_equal(fast[name].codes, slow[name].codes)
        else:
            assert fast[name].dtype == slow[name].dtype and np.array_equal(fast[name], slow[name])
    assert list(fast["user_id"]) == users and np.array_equal(fast["vec"], vecs)


def test_a_dataset_too_big_for_memory_is_refused_before_reading(tiny_dataset, monkeypatch):
    monkeypatch.setattr(data, "BIG_INTER_FILE", 0)  # the check runs for a file of any size
    monkeypatch.setattr(fetch, "available_memory", lambda: 10_000)  # bytes
    with pytest.raises(data.DataError, match=r"tiny.inter: about [\d,]+ interactions need about .* GiB of memory") as e:
        load("tiny", tiny_dataset, log=lambda m: None)
    assert "\n" not in str(e.value)
    assert not any("feature" in f for f in os.listdir(os.path.join(tiny_dataset, "tiny")))  # nothing was prepared


@given(st.lists(st.text(min_size=1, max_size=3), max_size=40))
def test_remap_is_a_bijection_from_one(tokens):
    ids, vocab = data.remap(tokens)
    assert vocab[0] == "[PAD]"
    assert len(set(vocab)) == len(vocab)
    assert [vocab[i] for i in ids] == tokens
    assert set(ids.tolist()) == set(range(1, len(vocab)))


# ---------------------------------------------------------------- TransE

@pytest.mark.parametrize("optimizer, lr", [("lazy", 0.005), ("dense", 0.01)])
def test_transe_learns_planted_structure(optimizer, lr):
    # 200 heads, 5 relations; relation a sends head h to tail 200 + a * 10 + h % 10
    triples = [(h, a, 200 + a * 10 + h % 10) for h in range(200) for a in range(5)]
    ent, rel, hits = transe.train_transe(triples, 250, 5, dim=16, epochs=40, lr=lr, batch_size=256, seed=0,
                                         optimizer=optimizer, log=lambda m: None)
    assert ent.shape == (250, 16) and rel.shape == (5, 16)
    assert np.allclose(np.linalg.norm(ent, axis=1), 1, atol=1e-5)
    assert hits > 0.5  # random ranking gives 10 / 250 = 0.04


def test_transe_is_the_same_on_any_number_of_threads():
    # many repeated entities per batch: with several threads the gradient of ent[h] would be
    # summed in a different order each run (it was, before TransE was pinned to one thread)
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 300, 30000), rng.integers(0, 4, 30000), rng.integers(0, 300, 30000)], 1)
    threads = torch.get_num_threads()
    runs = []
    for n in (2, 2, 1):
        torch.set_num_threads(n)
        runs.append(transe.train_transe(triples, 300, 4, dim=64, epochs=2, lr=0.005, seed=0, log=lambda m: None)[0])
        assert torch.get_num_threads() == n  # restored afterwards
    torch.set_num_threads(threads)
    for ent in runs[1:]:
        assert np.array_equal(ent, runs[0])


@pytest.mark.parametrize("quiet", [False, True])
def test_transe_shows_a_bar_on_a_terminal_and_its_log_lines_either_way(monkeypatch, quiet):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 30, 200), rng.integers(0, 2, 200), rng.integers(0, 30, 200)], 1)
    logs = []
    transe.train_transe(triples, 30, 2, dim=8, epochs=12, lr=0.005, seed=0, log=logs.append, show=not quiet)
    bars = [ln for ln in sys.stderr.getvalue().replace("\r", "\n").splitlines() if "epoch/s" in ln]
    assert (not bars) if quiet else any("/12 [" in ln for ln in bars), sys.stderr.getvalue()[-300:]
    assert [m.split(":")[0] for m in logs] == ["TransE epoch 1/12", "TransE epoch 10/12", "TransE epoch 12/12"]


def test_transe_leaves_the_rows_no_batch_uses_unchanged():
    # 40 triples among entities 0..9 of 5000: a batch uses those, plus one corrupted entity per triple
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 10, 40), rng.integers(0, 2, 40), rng.integers(0, 10, 40)], 1)
    run = lambda epochs: transe.train_transe(triples, 5000, 2, dim=8, epochs=epochs, lr=0.005, batch_size=10, holdout=0,
                                             seed=0, log=lambda m: None)[0]
    start, trained = run(0), run(3)  # epochs=0: the initial vectors, after the final renormalisation
    changed = np.flatnonzero((start != trained).any(1))
    assert set(range(10)) <= set(changed)
    # 3 epochs x 40 triples corrupt at most 120 other entities; the other 4870+ rows are exactly as they started
    assert 0 < len(changed) - 10 <= 120


def dense_transe(triples, n_entities, n_relations, dim, epochs, batch_size, margin, lr, holdout, seed, beta1=0.0):
    """The reference train_transe must equal: the whole table renormalised before every batch,
    dense gradients, torch.optim.Adam with betas (beta1, 0.999) on every row. Same random draws.
    beta1 0: the lazy optimiser's step; 0.9: the dense optimiser's (torch's Adam as it is)."""
    g = torch.Generator().manual_seed(seed)
    triples = torch.as_tensor(np.asarray(triples), dtype=torch.long)
    perm = torch.randperm(len(triples), generator=g)
    n_test = int(round(holdout * len(triples))) if len(triples) >= 20 else 0
    train = triples[perm[n_test:]]
    bound = 6.0 / dim ** 0.5
    ent = ((torch.rand(n_entities, dim, generator=g) * 2 - 1) * bound).requires_grad_()
    rel = transe.unit((torch.rand(n_relations, dim, generator=g) * 2 - 1) * bound).requires_grad_()
    opt = torch.optim.Adam([ent, rel], lr=lr, betas=(beta1, 0.999))
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), batch_size):
            h, r, t = train[order[i:i + batch_size]].T
            corrupt = torch.randint(n_entities, h.shape, generator=g)
            head_side = torch.rand(h.shape, generator=g) < 0.5
            h2, t2 = torch.where(head_side, corrupt, h), torch.where(head_side, t, corrupt)
            with torch.no_grad():
                ent.copy_(transe.unit(ent))
            loss = torch.relu(margin + (ent[h] + rel[r] - ent[t]).norm(dim=1) - (ent[h2] + rel[r] - ent[t2]).norm(dim=1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return transe.unit(ent.detach()).numpy(), rel.detach().numpy()


# lazy: Adam without momentum on a batch's rows is it on every row (float sums in another order: 1e-9);
# dense: torch's Adam with momentum on every row, the very same operations (1e-12)
@pytest.mark.parametrize("optimizer, beta1, atol", [("lazy", 0.0, 1e-9), ("dense", 0.9, 1e-12)])
@given(st.integers(5, 60), st.integers(1, 4), st.integers(20, 300), st.integers(7, 64), st.integers(0, 2 ** 16))
@settings(max_examples=12, deadline=None)
def test_transe_optimizers_equal_the_dense_reference(optimizer, beta1, atol, n_entities, n_relations, n_triples,
                                                      batch_size, seed):
    torch.set_default_dtype(torch.float64)
    try:
        rng = np.random.default_rng(seed)
        triples = np.stack([rng.integers(0, n_entities, n_triples), rng.integers(0, n_relations, n_triples),
                            rng.integers(0, n_entities, n_triples)], 1)
        args = dict(dim=5, epochs=3, batch_size=batch_size, margin=1.0, lr=0.05, holdout=0.1, seed=seed)
        ent, rel, _ = transe.train_transe(triples, n_entities, n_relations, optimizer=optimizer, log=lambda m: None, **args)
        ent_ref, rel_ref = dense_transe(triples, n_entities, n_relations, beta1=beta1, **args)
        ent_other, _ = dense_transe(triples, n_entities, n_relations, beta1=0.9 - beta1, **args)
    finally:
        torch.set_default_dtype(torch.float32)
    np.testing.assert_allclose(ent, ent_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(rel, rel_ref, rtol=0, atol=atol)
    assert not np.allclose(ent, ent_other, atol=1e-6)  # the other optimiser: other vectors


def test_transe_auto_is_dense_for_small_kgs_and_lazy_for_large_ones():
    auto = dict(epochs=60, learning_rate=None, seed=0, optimizer="auto")
    assert transe.resolve(auto, transe.DENSE_MAX_TRIPLES) == {**auto, "optimizer": "dense", "learning_rate": 0.01}
    assert transe.resolve(auto, transe.DENSE_MAX_TRIPLES + 1) == {**auto, "optimizer": "lazy", "learning_rate": 0.005}
    assert transe.resolve({**auto, "optimizer": "lazy"}, 10)["learning_rate"] == 0.005  # the chosen optimiser's lr
    assert transe.resolve({**auto, "learning_rate": 0.3}, 10) == {**auto, "optimizer": "dense", "learning_rate": 0.3}


def test_transe_lazy_adam_moves_only_the_rows_it_is_given():
    torch.manual_seed(0)
    w = torch.randn(6, 3)
    w0 = w.clone()
    adam = transe.LazyAdam(w, lr=0.1)
    adam.step(torch.tensor([0, 2]), w[[0, 2]].clone(), torch.ones(2, 3))
    w1, v1 = w.clone(), adam.v.clone()
    assert not torch.equal(w1[[0, 2]], w0[[0, 2]]) and torch.equal(w1[[1, 3, 4, 5]], w0[[1, 3, 4, 5]])
    adam.step(torch.tensor([4]), w[[4]].clone(), torch.ones(1, 3))
    # rows 0 and 2 were not in this step: they do not move, and their v's decay waits for their next step
    for t, t1 in ((w, w1), (adam.v, v1)):
        assert torch.equal(t[[0, 1, 2, 3, 5]], t1[[0, 1, 2, 3, 5]])
    assert not torch.equal(w[4], w0[4])


@pytest.mark.parametrize("n_triples", [60000, 10000])
def test_transe_hits_at_10_ranks_a_sample_of_the_held_out_triples(monkeypatch, n_triples):
    scored = []
    hits_at_10 = transe.transe_hits_at_10
    monkeypatch.setattr(transe, "transe_hits_at_10", lambda ent, rel, test: scored.append(test) or hits_at_10(ent, rel, test))
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 1000, n_triples), rng.integers(0, 3, n_triples), rng.integers(0, 1000, n_triples)], 1)
    hits = transe.train_transe(triples, 1000, 3, dim=8, epochs=0, lr=0.005, seed=0, log=lambda m: None)[2]
    (test,) = scored
    assert len(test) == min(transe.HITS_SAMPLE, round(0.05 * n_triples))  # 2000 of 3000 held out; all 500 of 500
    assert 0 <= hits <= 1 and hits == round(hits * len(test)) / len(test)  # a share of the sample


# ---------------------------------------------------------------- loading

def test_load_tiny_dataset_and_cache(tiny_dataset):
    msgs = []
    ds = load("tiny", tiny_dataset, kg_embedding_size=8, log=msgs.append)
    assert any("training TransE" in m for m in msgs)
    folder = os.path.join(tiny_dataset, "tiny")
    assert os.path.exists(os.path.join(folder, "tiny.ent_feature"))
    with open(os.path.join(folder, "tiny.ent_feature")) as f:
        assert f.readline() == "ent_id:token\tent_vec:float_seq\n"
        tok, vec = f.readline().rstrip("\n").split("\t")
        assert len(vec.split()) == 8
    assert ds.relation_kg.shape == (3, 8) and ds.item_kg.shape == (ds.n_items + 1, 8)
    assert np.all(ds.item_kg[0] == 0)
    # row i of item_kg is the vector of item i's linked entity
    ent = data.read_atomic(os.path.join(folder, "tiny.ent_feature"))
    vec = dict(zip(ent["ent_id"], ent["ent_vec"]))  # Tokens iterate as strings, vectors as rows
    for i in range(1, ds.n_items + 1):
        np.testing.assert_allclose(ds.item_kg[i], vec["e" + ds.item_tokens[i]], atol=1e-5)
    # a second load reads the cache and gives the same vectors
    msgs.clear()
    ds2 = load("tiny", tiny_dataset, kg_embedding_size=8, log=msgs.append)
    assert not any("training TransE" in m for m in msgs)
    np.testing.assert_allclose(ds2.item_kg, ds.item_kg, atol=1e-5)
    assert ds2.fingerprint == ds.fingerprint
    assert not [f for f in os.listdir(folder) if f.startswith("tmp-")]


def test_unlinked_items_dropped_or_kept(tmp_path):
    write_tiny_dataset(str(tmp_path), linked=range(1, 11))  # items 11..15 have no link
    ds = load("tiny", str(tmp_path), kg_embedding_size=4, log=lambda m: None)
    assert all(int(t) <= 10 for t in ds.item_tokens[1:])
    kept = load("tiny", str(tmp_path), keep_unlinked=True, kg_embedding_size=4, log=lambda m: None)
    assert kept.stats["interactions"] > ds.stats["interactions"]
    unlinked = [i for i, t in enumerate(kept.item_tokens) if i and int(t) > 10]
    assert unlinked and kept.stats["unlinked_items"] == len(unlinked)
    assert np.all(kept.item_kg[unlinked] == 0) and np.all(kept.item_entity[unlinked] == -1)


def test_attribute_kg(tiny_dataset):
    ds = load("tiny", tiny_dataset, kg="attributes", kg_embedding_size=4, log=lambda m: None)
    assert ds.relation_tokens == ["genre", "release_year", "decade"]
    assert ds.stats["linked_items"] == ds.n_items
    assert ds.item_titles[1].startswith("Movie ")


def test_link_check_separates_right_and_wrong_links(tiny_dataset):
    folder = os.path.join(tiny_dataset, "tiny")
    item_cols = data.read_atomic(os.path.join(folder, "tiny.item"))
    triples, links = data.attribute_kg(item_cols)
    right = link_check.link_check(triples, links, item_cols)
    assert right["p_share_label_given_kg"] == 1.0 and right["lift"] > 2
    # links shuffled (as in ml-100k's Freebase table): the genres now belong to other films
    perm = np.random.default_rng(1).permutation(len(links))
    shuffled = [(links[p][0], e) for p, (_, e) in zip(perm, links)]
    wrong = link_check.link_check(triples, shuffled, item_cols)
    assert wrong["lift"] < 0.6 * right["lift"]


# ---------------------------------------------------------------- bad input

def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("user_id\titem_id\n1\t2\n", "not name:type"),
    ("user_id:token\titem_id:token\n1\t2\n3\n", "line 3: expected 2"),
    ("user_id:token\tscore:float\n1\tabc\n", "line 2: column 'score': cannot parse 'abc'"),
    ("ent_id:token\tent_vec:float_seq\na\t1 2 3\nb\t1 2\n", "line 3: column 'ent_vec': vector of length 2"),
    ("user_id:token\titem_id:token\n", "no rows"),
])
def test_read_atomic_errors(tmp_path, text, needle):
    path = _write(tmp_path / "x.inter", text)
    with pytest.raises(data.DataError, match=needle) as e:
        data.read_atomic(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_column(tmp_path):
    with pytest.raises(data.DataError, match="file not found"):
        data.read_atomic(str(tmp_path / "nope.inter"))
    path = _write(tmp_path / "x.inter", "user_id:token\n1\n")
    with pytest.raises(data.DataError, match="missing column 'item_id'"):
        data.read_atomic(path, required=("user_id", "item_id"))


def test_link_to_unknown_entity(tmp_path):
    folder = write_tiny_dataset(str(tmp_path))
    with open(os.path.join(folder, "tiny.link"), "a") as f:
        f.write("3\tnot_an_entity\n")
    with pytest.raises(data.DataError, match="tiny.link: line 17: entity 'not_an_entity'"):
        load("tiny", str(tmp_path), kg_embedding_size=4, log=lambda m: None)


def test_checksum_mismatch(tmp_path):
    path = _write(tmp_path / "fake.whl", "not a wheel")
    with pytest.raises(data.DataError, match="sha256 .* does not match"):
        fetch.verify_sha256(path, fetch.ML100K_WHEEL_SHA256)


def test_write_atomic_leaves_nothing_half_written(tmp_path):
    def rows():
        yield ["a", "1"]
        raise RuntimeError("disk full")
    target = tmp_path / "x.ent_feature"
    with pytest.raises(RuntimeError):
        data.write_atomic(str(target), ["ent_id:token", "ent_vec:float_seq"], rows())
    assert os.listdir(tmp_path) == []


def test_users_with_one_or_two_interactions(tmp_path):
    folder = os.path.join(tmp_path, "short")
    os.makedirs(folder)
    _write(os.path.join(folder, "short.inter"), "user_id:token\titem_id:token\ttimestamp:float\n"
           "a\t1\t1\nb\t1\t1\nb\t2\t2\nc\t1\t1\nc\t2\t2\nc\t3\t3\nd\t1\t1\nd\t2\t2\nd\t3\t3\nd\t1\t4\n")
    _write(os.path.join(folder, "short.link"), "item_id:token\tentity_id:token\n1\tx\n2\ty\n3\tz\n")
    _write(os.path.join(folder, "short.kg"), "head_id:token\trelation_id:token\ttail_id:token\nx\tr\ty\ny\tr\tz\n")
    ds = load("short", str(tmp_path), kg_embedding_size=4, log=lambda m: None)
    # a: no sample; b: 1 train; c: 1 train + 1 test; d: 1 train + valid + test (RecBole's rule)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (3, 1, 2)
    assert ds.stats["short_users"] == 3


# ---------------------------------------------------------------- the command

def test_command_json_and_errors(tiny_dataset):
    out = subprocess.run([sys.executable, "-m", "extras.prepare", "--dataset", "tiny", "--data_path",
                          tiny_dataset, "--kg_embedding_size", "8", "--json"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ["users", "items", "interactions", "train_samples", "valid_samples", "test_samples",
                "entities", "relations", "triples", "linked_items", "transe_hits@10"]:
        assert key in stats
    assert stats["relations"] == 3
    bad = subprocess.run([sys.executable, "-m", "extras.prepare", "--dataset", "nope", "--data_path",
                          tiny_dataset], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "nope" in bad.stderr


def test_real_ml100k(tmp_path_factory):
    """Downloads RecBole's wheel; skips cleanly where the package index is unreachable."""
    root = str(tmp_path_factory.mktemp("data"))
    try:
        fetch.fetch_ml100k(root, log=lambda m: None)
    except data.DataError as e:
        pytest.skip(f"ml-100k download unavailable: {e}")
    for kg, expect in [("freebase", (943, 1598, 97554, 94725, 943, 943)),
                       ("attributes", (943, 1682, 100000, 97171, 943, 943))]:
        ds = load("ml-100k", root, kg=kg, kg_embedding_size=64, log=lambda m: None)
        s = ds.stats
        assert (s["users"], s["items"], s["interactions"], s["train_samples"], s["valid_samples"], s["test_samples"]) == expect
    assert s["relations"] == 3


# ---------------------------------------------------------------- sequence-mode windows

@given(interaction_logs(), st.integers(1, 12), st.data())
@settings(max_examples=150, deadline=None)
def test_windows_cover_every_training_target_once(log, max_len, draw):
    seqs, splits, stride = splits_and_windows(log, max_len, draw)
    w = splits["windows"]
    item_seq, lengths, targets = w.cut(np.arange(len(w)))
    assert w.n_targets() == int((targets > 0).sum())
    for u, seq in enumerate(seqs):
        n_train = int((splits["train"].users == u).sum())
        rows = np.flatnonzero(w.users == u)
        # rebuild each window's position in the user's sequence: windows start at 0, stride, 2*stride...
        covered = []
        for k, r in enumerate(rows):
            s, L = k * stride, lengths[r]
            assert np.array_equal(item_seq[r, :L], seq[s:s + L]) and np.all(item_seq[r, L:] == 0)
            assert targets.shape[1] <= max_len
            for j in range(targets.shape[1]):
                if targets[r, j]:
                    assert j < L and targets[r, j] == seq[s + j + 1]
                    covered.append(s + j + 1)
            # nothing at or after the valid item is read or predicted
            assert s + L <= n_train
        assert sorted(covered) == list(range(1, n_train + 1))  # every training target exactly once
        assert covered == sorted(covered)


def test_link_check_command(tiny_dataset, capsys):
    assert link_check.main(["--dataset", "tiny", "--data_path", tiny_dataset, "--json"]) == 0
    out = capsys.readouterr().out
    assert "attributes KG (genre)" in out and json.loads(out.splitlines()[-1])["attributes"]["lift"] > 2
    assert link_check.main(["--dataset", "nowhere", "--data_path", tiny_dataset]) == 1
