"""The paper's training choices where they differ from RecBole's (docs/paper-differences.md).

Huang et al.'s released code trains KSR with BPR against negatives drawn by popularity: an item is
drawn with probability proportional to how often it occurs in the training data. RecBole names
that `train_neg_sample_args: {distribution: popularity}`; here `--train_neg_sample_distribution
popularity` (with `--loss_type BPR --train_neg_sample_num 10` for the authors' ten). train.py
loads this module only for that option.
"""
import numpy as np
import torch

import data
import ksr


def training_targets(split):
    """The item ids the training split predicts: items[ends] of prefix samples; for windows, each
    step's next item after the context-only steps (the targets `Split.cut` makes), each once."""
    if split.skip is None:
        return split.items[split.ends]
    first = split.starts + split.skip + 1  # the target of step t is items[starts + t + 1]
    counts = np.maximum(split.ends - first + 1, 0)
    return split.items[np.repeat(first, counts) + data.ragged_arange(counts)]


def popularity_sampler(split, n_items):
    """sample(targets, n_items, generator): each negative drawn with probability proportional to the
    item's count among the training targets, never the target itself. Items never a target are never
    drawn, as in the authors' sampler; a target that is the only item with a count gets a uniform
    draw over the others."""
    counts = np.bincount(training_targets(split), minlength=n_items + 1)[:n_items + 1].astype(np.float64)
    counts[0] = 0  # padding
    cdf = torch.as_tensor(np.cumsum(counts) / counts.sum())  # cdf[i]: the share of items 1..i

    def sample(targets, _n_items, generator=None):  # ksr.sample_negatives' signature; n_items is known
        # inverse-cdf sampling with the target's share cut out: u uniform on [0, 1 - p_t), moved past
        # the target's interval [cdf[t-1], cdf[t]); exact, one draw, no rejection loop
        below, upto = cdf[(targets - 1).clamp(min=0)], cdf[targets]
        share = upto - below
        u = torch.rand(targets.shape, generator=generator, dtype=torch.float64) * (1 - share)
        u = torch.where(u >= below, u + share, u)
        neg = torch.searchsorted(cdf, u, right=True).clamp_(1, n_items)  # the first item whose cdf exceeds u
        # the target is the only item with a count (share 1: u + share lands past the last item), or a rounding edge
        if (same := (neg == targets) | (share >= 1)).any():
            neg[same] = ksr.sample_negatives(targets[same], n_items, generator)
        return neg

    return sample
