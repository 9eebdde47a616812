"""RecBole's sampled evaluation (valid_eval_mode / test_eval_mode uniN, popN): each target ranked among
N sampled items instead of all of them. train.py imports it only for a run that sets one."""
import numpy as np
import torch

from data import ragged_arange
from options import DataError


def eval_candidates(ds, split, mode, gen):
    """RecBole's sampled evaluation (eval_args mode uniN / popN): for each sample of `split`, N distinct
    items the user has not interacted with, uniformly or in proportion to popularity (how often an item
    is a target, train, valid and test: RecBole's popularity). "Interacted": every item of the user up
    to this split's last target (RecBole's used ids of the phases so far); for benchmark files, the
    sample's own items. RecBole draws with replacement and ranks the distinct items drawn (a repeat
    counts once), so it ranks a few fewer than N; here exactly N. Returns (len(split), N) int64."""
    n = int(mode[3:])
    targets = np.concatenate([s.items[s.ends] for s in (ds.train, ds.valid, ds.test)])
    weight = np.bincount(targets, minlength=ds.n_items + 1).astype(np.float64) if mode.startswith("pop") else \
        np.ones(ds.n_items + 1)
    weight[0] = 0  # the padding item
    if ds.benchmark:
        lo, hi = split.starts, split.ends + 1
    else:
        last = np.zeros(len(ds.seqs), np.int64)
        np.maximum.at(last, split.users, split.ends + 1)
        lo, hi = ds.seqs.offsets[split.users], last[split.users]
    out = np.zeros((len(split), n), np.int64)
    for c in range(0, len(split), 1024):  # (1024, n_items) at a time
        rows = np.arange(c, min(c + 1024, len(split)))
        w = np.broadcast_to(weight, (len(rows), len(weight))).copy()
        counts = hi[rows] - lo[rows]
        seen = ragged_arange(counts) + np.repeat(lo[rows], counts)
        w[np.repeat(np.arange(len(rows)), counts), split.items[seen]] = 0
        short = (w > 0).sum(1) < n
        if short.any():
            u = ds.user_tokens[split.users[rows[np.argmax(short)]]]
            raise DataError(f"{mode}: user {u!r} has fewer than {n} items to sample (items it has not interacted "
                            f"with{', and with a popularity above 0' if mode.startswith('pop') else ''}): a smaller N, "
                            f"or full")
        out[rows] = torch.multinomial(torch.as_tensor(w), n, replacement=False, generator=gen).numpy()
    return out


def run_candidates(ds, cfg, log):
    """{"valid": ..., "test": ...}: each split's sampled candidates (--valid/test_eval_mode uniN, popN), None for
    full ranking; drawn once per run from --seed, so every epoch is validated on the same candidates."""
    gen = torch.Generator().manual_seed(cfg["seed"])
    out = {}
    for name in ("valid", "test"):
        mode = cfg[f"{name}_eval_mode"]
        out[name] = None
        if mode != "full":
            out[name] = eval_candidates(ds, getattr(ds, name), mode, gen)
            log(f"{name}: each target ranked among {out[name].shape[1]} sampled items ({mode})")
    return out

