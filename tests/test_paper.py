"""The paper's choices as options: popularity-sampled BPR negatives (extras/paper.py), frozen BPR-MF item
vectors (extras/bprmf.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import data
import options
import train
from extras import bprmf, checkpoint, paper, recbole_config
from test_train import tiny_cfg


def test_training_targets_are_the_targets_cut_makes(tiny_dataset):
    for mode in ("prefix", "sequence"):
        ds = train.load_data(tiny_cfg(tiny_dataset, None, train_mode=mode), log=lambda m: None)
        split = ds.train if mode == "prefix" else data.sequence_windows(ds.seqs, ds.train, 3, 2)
        targets = split.cut(np.arange(len(split)))[2]
        assert np.array_equal(np.sort(paper.training_targets(split)), np.sort(targets[targets > 0]))


def test_a_hand_made_split_counts_what_it_predicts():
    items = np.array([5, 1, 2, 1, 3, 1, 4, 4])
    prefix = data.Split(items, users=np.array([1, 1, 2]), starts=np.array([0, 0, 4]), ends=np.array([1, 2, 6]), width=2)
    assert paper.training_targets(prefix).tolist() == [1, 2, 4]  # items[ends]
    # one window over items[0:7], its first 2 steps context: targets items[3..7]
    windows = data.Split(items, users=np.array([1]), starts=np.array([0]), ends=np.array([7]), width=7, skip=np.array([2]))
    assert paper.training_targets(windows).tolist() == [1, 3, 1, 4, 4]


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(0, 6), min_size=2, max_size=9), target=st.integers(1, 9), seed=st.integers(0, 99))
@example(counts=[1, 0, 0], target=1, seed=0)  # the target holds every count: uniform over the others, not the last item
def test_popularity_draws_are_in_proportion_to_counts_and_never_the_target(counts, target, seed):
    n_items = len(counts)
    target = min(target, n_items)
    counts[0] = max(counts[0], 1)  # at least one item is a training target
    items = np.repeat(np.arange(1, n_items + 1), counts)
    split = data.Split(np.append(items, 0), users=np.zeros(len(items), int), starts=np.zeros(len(items), int),
                       ends=np.arange(len(items)), width=1)  # prefix samples whose targets are `items`
    sample = paper.popularity_sampler(split, n_items)
    n = 20000
    neg = sample(torch.full((n,), target), n_items, torch.Generator().manual_seed(seed))
    assert neg.min() >= 1 and neg.max() <= n_items and not (neg == target).any()
    c = np.array(counts, float)
    c[target - 1] = 0
    if c.sum() == 0:  # the target is the only item with a count: uniform over the others
        want = np.full(n_items, 1 / (n_items - 1))
        want[target - 1] = 0
    else:
        want = c / c.sum()
    got = np.bincount(neg.numpy() - 1, minlength=n_items) / n
    assert np.all(got[want == 0] == 0)
    assert np.abs(got - want).max() < 5 * np.sqrt(0.25 / n)  # five standard deviations at worst


def test_bpr_with_popularity_negatives_trains(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset, str(tmp_path / "r"), loss_type="BPR", train_neg_sample_num=3,
                   train_neg_sample_distribution="popularity", epochs=2)
    res = train.run(cfg, log=lambda m: None)
    assert np.isfinite(res["test"]["mrr@10"])


@pytest.mark.parametrize("args", [["--train_neg_sample_distribution", "zipf"],
                                  ["--train_neg_sample_distribution", "popularity"]])  # the second: with CE
def test_a_bad_distribution_is_one_line_and_exit_2(tiny_dataset, args):
    p = subprocess.run([sys.executable, "train.py", "--dataset", "tiny", "--data_path", tiny_dataset] + args,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--train_neg_sample_distribution" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2  # usage line and the error


def test_recbole_names_the_distribution():
    bad = lambda m: ValueError(m)
    assert recbole_config._train_neg_sample_args({"distribution": "popularity", "sample_num": 10}, bad) == {
        "train_neg_sample_num": 10, "train_neg_sample_distribution": "popularity"}
    with pytest.raises(ValueError, match="zipf"):
        recbole_config._train_neg_sample_args({"distribution": "zipf"}, bad)


# -----------------------------------------------------------------------------
# Frozen BPR-MF item vectors (extras/bprmf.py, --item_embedding bprmf)

def test_bprmf_sees_each_users_items_before_valid_and_test(tiny_dataset):
    items = np.array([5, 1, 2, 1, 3, 1, 4, 4])
    prefix = data.Split(items, users=np.array([1, 1, 2]), starts=np.array([0, 0, 4]), ends=np.array([1, 2, 6]), width=2)
    assert [a.tolist() for a in bprmf.training_pairs(prefix)] == [[1, 1, 1, 2, 2, 2], [5, 1, 2, 3, 1, 4]]
    for mode in ("prefix", "sequence"):
        ds = train.load_data(tiny_cfg(tiny_dataset, None, train_mode=mode, MAX_ITEM_LIST_LENGTH=3), log=lambda m: None)
        split = ds.train if mode == "prefix" else data.sequence_windows(ds.seqs, ds.train, 3, 2)
        users, got = bprmf.training_pairs(split)
        want = [(u, i) for u in range(1, len(ds.seqs)) for i in ds.seqs[u][:-2].tolist()]  # leave-one-out: not the last two
        assert list(zip(users.tolist(), got.tolist())) == want


def test_bprmf_learns_a_planted_preference_and_leaves_the_global_rng_alone():
    # users 1-10 take items 1-6, users 11-20 items 7-12, each all but one item of its group (held out)
    users, items = [], []
    for u in range(1, 21):
        group = range(1, 7) if u <= 10 else range(7, 13)
        users += [u] * 5
        items += [i for i in group if i != group[u % 6]]
    state = torch.get_rng_state()
    P, Q = bprmf.train_bprmf(np.array(users), np.array(items), 20, 12, 4, epochs=200, lr=0.05, show=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert Q.shape == (13, 4) and not Q[0].any()
    scores = P[1:] @ Q[1:].T  # (20 users, 12 items)
    mine = torch.tensor([[(i < 6) == (u < 10) for i in range(12)] for u in range(20)])
    held_out = torch.tensor([(u // 10) * 6 + (u + 1) % 6 for u in range(20)])  # group[u % 6], 0-based
    other = torch.where(mine, -torch.inf, scores).max(1).values
    assert (scores[torch.arange(20), held_out] > other).float().mean() >= 0.9  # the unseen item of one's own group wins
    P2, Q2 = bprmf.train_bprmf(np.array(users), np.array(items), 20, 12, 4, epochs=200, lr=0.05, show=False)
    assert torch.equal(Q, Q2) and torch.equal(P, P2)  # its own seed


def test_bprmf_valid_hit_at_10_by_hand():
    Q = torch.tensor([[0.0, 0]] + [[float(i), 0] for i in range(1, 13)])  # score(u, i) = i for P_u = (1, 0)
    P = torch.tensor([[0.0, 0], [1, 0], [1, 0], [1, 0]])
    users, items = np.array([1, 1, 2, 3]), np.array([12, 11, 5, 3])  # training pairs, by user
    valid = data.Split(np.array([2, 1, 3]), users=np.array([1, 2, 3]), starts=np.arange(3), ends=np.arange(3), width=1)
    # user 1: target 2, above it 3..10 (11, 12 seen): rank 9, a hit; user 2: target 1, above it 2..12 but 5: rank 11;
    # user 3: its target 3 is a training item, left out: a miss
    assert bprmf.valid_hit_at_10(P, Q, users, items, valid) == pytest.approx(1 / 3)


def test_bprmf_vectors_are_trained_once_cached_and_checked(tiny_dataset, monkeypatch):
    cfg = tiny_cfg(tiny_dataset, None, item_embedding="bprmf")
    ds = train.load_data(cfg, log=lambda m: None)
    lines = []
    v1 = bprmf.item_vectors(cfg, ds, lines.append)
    assert v1.shape == (ds.n_items + 1, 8) and v1.dtype == np.float32 and not v1[0].any()
    assert any("training BPR-MF" in line for line in lines)
    cached = [f for f in os.listdir(os.path.join(tiny_dataset, "tiny")) if ".bprmf-" in f]
    assert sorted(f.rsplit(".", 1)[1] for f in cached) == ["json", "npy"]
    real = bprmf.train_bprmf
    monkeypatch.setattr(bprmf, "train_bprmf", lambda *a, **k: pytest.fail("trained again"))
    assert np.array_equal(bprmf.item_vectors(cfg, ds, lines.append), v1)
    monkeypatch.setattr(bprmf, "train_bprmf", real)
    v2 = bprmf.item_vectors({**cfg, "embedding_size": 6}, ds, lines.append)  # another width: a file of its own
    assert v2.shape == (ds.n_items + 1, 6) and np.array_equal(bprmf.item_vectors(cfg, ds, lines.append), v1)
    npy = os.path.join(tiny_dataset, "tiny", next(f for f in cached if f.endswith(".npy")))
    with open(npy, "wb") as f:
        f.write(b"not numpy")
    with pytest.raises(data.DataError, match="remove it to train them again") as e:
        bprmf.item_vectors(cfg, ds, lines.append)
    assert npy in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("no_memory", [False, True])
def test_frozen_item_vectors_stay_as_pretrained(tiny_dataset, tmp_path, monkeypatch, no_memory):
    cfg = tiny_cfg(tiny_dataset, str(tmp_path / "r"), item_embedding="bprmf", no_memory=no_memory, epochs=2)
    res = train.run(cfg, log=lambda m: None)
    assert np.isfinite(res["test"]["mrr@10"])
    ds = train.load_data(cfg, log=lambda m: None)
    vectors = torch.as_tensor(bprmf.item_vectors(cfg, ds, lambda m: None))
    assert torch.equal(torch.load(res["checkpoint"], weights_only=False)["model"]["item_embedding.weight"], vectors)
    model = train.build_model(cfg, ds, log=lambda m: None)
    assert not model.item_embedding.weight.requires_grad
    assert all(p is not model.item_embedding.weight for g in train.make_optimizer(model, cfg).param_groups for p in g["params"])
    # a saved model holds its vectors: loading it (recommend, explain, --eval_only) never pretrains them again
    folder = os.path.join(tiny_dataset, "tiny")
    for f in os.listdir(folder):
        if ".bprmf-" in f:
            os.remove(os.path.join(folder, f))
    monkeypatch.setattr(bprmf, "train_bprmf", lambda *a, **k: pytest.fail("pretrained again"))
    _, _, loaded, _ = checkpoint.load_checkpoint(res["checkpoint"], {}, log=lambda m: None)
    assert torch.equal(loaded.item_embedding.weight, vectors) and not loaded.item_embedding.weight.requires_grad


def test_item_embedding_is_an_option_and_a_yaml_setting(tiny_dataset, tmp_path):
    p = subprocess.run([sys.executable, "train.py", "--dataset", "tiny", "--data_path", tiny_dataset, "--item_embedding",
                        "word2vec"], capture_output=True, text=True)
    assert p.returncode == 2 and "--item_embedding" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2  # usage line and the error
    cfg = vars(train.parse_args(["--config_files", "docs/paper-choices.yaml"]))
    assert (cfg["item_embedding"], cfg["gamma"], cfg["hidden_size"], cfg["loss_type"], cfg["train_neg_sample_num"],
            cfg["train_neg_sample_distribution"], cfg["learner"], cfg["epochs"]) == (
        "bprmf", 1.0, 256, "BPR", 10, "popularity", "adagrad", 10)


def test_damaged_or_diverged_bprmf_vectors_are_one_line_errors(tiny_dataset, monkeypatch):
    cfg = tiny_cfg(tiny_dataset, None, item_embedding="bprmf")
    ds = train.load_data(cfg, log=lambda m: None)
    monkeypatch.setattr(bprmf, "train_bprmf", lambda *a, **k: (torch.zeros(2, 8), torch.full((ds.n_items + 1, 8), torch.nan)))
    with pytest.raises(options.UserError, match="NaN or inf vectors; nothing was written"):
        bprmf.item_vectors(cfg, ds, lambda m: None)
    assert not [f for f in os.listdir(os.path.join(tiny_dataset, "tiny")) if ".bprmf-" in f or f.startswith("tmp-")]
    monkeypatch.undo()
    bprmf.item_vectors(cfg, ds, lambda m: None)
    folder = os.path.join(tiny_dataset, "tiny")
    path = next(os.path.join(folder, f) for f in os.listdir(folder) if ".bprmf-" in f and f.endswith(".npy"))
    for bad, why in ((np.zeros((3, 8), np.float32), r"\(3, 8\) vectors, not"), (np.full((ds.n_items + 1, 8), np.inf), "NaN or inf")):
        np.save(path, bad)
        with pytest.raises(data.DataError, match=why):
            bprmf.item_vectors(cfg, ds, lambda m: None)
