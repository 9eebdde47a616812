"""The paper's choices as options (extras/paper.py): popularity-sampled BPR negatives."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import data
import train
from extras import paper, recbole_config
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
