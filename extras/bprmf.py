"""BPR-MF item vectors (Rendle et al. 2009): the frozen item embeddings x_i of the authors' KSR.

Huang et al.'s code reads x_i from a file of BPR-MF vectors and never updates them
(docs/paper-differences.md); `--item_embedding bprmf` does the same. Matrix factorisation with
score(u, i) = P_u . Q_i, trained so that an item the user took scores above a uniformly drawn one:
loss -log sigmoid(P_u . Q_i - P_u . Q_j) + reg (|P_u|^2 + |Q_i|^2 + |Q_j|^2). It sees the training
split's (user, item) pairs only, never a valid or test target. Q (embedding_size wide) becomes x_i.

Trained once and cached beside the dataset, as data.kg_vectors caches TransE's vectors: the file
name holds a hash of what made it (the pairs, the width, the settings below, this file's text), so
a changed input trains again and runs side by side never replace each other's file; a .json
beside it, written first, records the same in words. train.build_model loads this module only
for the option.
"""
import hashlib
import json
import os

import numpy as np
import torch
from tqdm import tqdm

import data
import train
from options import UserError

# fixed, not options (as TransE's batch and margin): chosen once on ml-100k by this model's own valid Hit@10
# (docs/paper-differences.md); SparseAdam updates the rows a batch uses, so an epoch costs ~ pairs x dim
EPOCHS, BATCH_SIZE, LEARNING_RATE, REG, SEED = 80, 1024, 0.005, 1e-3, 2020


def training_pairs(split):
    """(users, items) of every item in the training split's samples, inputs and targets: a user's
    samples cover items[first start .. last end], the items before its valid and test targets."""
    n = int(split.users.max()) + 1 if len(split) else 1
    lo = np.full(n, np.iinfo(np.int64).max)
    hi = np.full(n, -1)
    np.minimum.at(lo, split.users, split.starts)
    np.maximum.at(hi, split.users, split.ends)  # the last target, items[end], is a training item too
    users = np.flatnonzero(hi >= 0)
    counts = hi[users] - lo[users] + 1
    idx = np.repeat(lo[users], counts) + data.ragged_arange(counts)
    return np.repeat(users, counts), split.items[idx]


def train_bprmf(users, items, n_users, n_items, dim, *, epochs=EPOCHS, lr=LEARNING_RATE, reg=REG, seed=SEED,
                batch_size=BATCH_SIZE, show=True):
    """(user vectors P (n_users + 1, dim), item vectors Q (n_items + 1, dim), row 0 (padding) of Q zero)
    from (user, item) pairs, ids from 1."""
    gen = torch.Generator().manual_seed(seed)  # its own: the run's model starts the same, trained here or cached
    P, Q = (torch.nn.Parameter(torch.randn(n + 1, dim, generator=gen) * 0.1) for n in (n_users, n_items))
    opt = torch.optim.SparseAdam([P, Q], lr=lr)
    lookup = lambda table, ids: torch.nn.functional.embedding(ids, table, sparse=True)
    u_all, i_all = torch.as_tensor(users, dtype=torch.int64), torch.as_tensor(items, dtype=torch.int64)
    for _ in tqdm(range(epochs), disable=not show, leave=False, unit="epoch", desc="BPR-MF"):
        order = torch.randperm(len(u_all), generator=gen)
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            u, i = lookup(P, u_all[rows]), lookup(Q, i_all[rows])
            j = lookup(Q, torch.randint(1, n_items + 1, (len(rows),), generator=gen))  # uniform negatives
            x = (u * (i - j)).sum(-1)
            loss = -torch.nn.functional.logsigmoid(x).mean() + reg * (u.square() + i.square() + j.square()).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    vectors = Q.detach().clone()
    vectors[0] = 0
    return P.detach(), vectors


def valid_hit_at_10(P, Q, users, items, split):
    """A check for the log and the record, never a choice: the share of `split`'s targets among the 10
    items of highest P_u . Q_i, the user's training items left out (as MF is usually evaluated)."""
    starts = np.searchsorted(users, split.users)  # training_pairs lists each user's pairs together
    ends = np.searchsorted(users, split.users, side="right")
    targets = torch.as_tensor(split.items[split.ends])
    hits = 0
    for b in range(0, len(split), 1024):
        rows = slice(b, b + 1024)
        scores = P[torch.as_tensor(split.users[rows])] @ Q.T
        scores[:, 0] = -torch.inf
        counts = ends[rows] - starts[rows]
        seen_row = np.repeat(np.arange(len(counts)), counts)
        seen = items[np.repeat(starts[rows], counts) + data.ragged_arange(counts)]
        scores[seen_row, seen] = -torch.inf
        t = targets[rows]
        hits += int(((train.rank_of_target(scores, t) <= 10) & (scores.gather(1, t[:, None])[:, 0] > -torch.inf)).sum())
    return hits / max(len(split), 1)


def item_vectors(cfg, ds, log=print):
    """(n_items + 1, embedding_size) float32 BPR-MF vectors for ds, from the cache or trained now."""
    users, items = training_pairs(ds.train)
    settings = {"dim": cfg["embedding_size"], "epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
                "reg": REG, "seed": SEED, "negatives": "uniform"}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for a in (users, items):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    with open(__file__, "rb") as f:
        h.update(f.read())
    key = h.hexdigest()[:16]
    folder = os.path.join(cfg["data_path"], cfg["dataset"])
    path = os.path.join(folder, f"{cfg['dataset']}.bprmf-{key}.npy")
    if not os.path.exists(path):
        log(f"item vectors: training BPR-MF on {len(users)} training (user, item) pairs ({ds.n_users} users, "
            f"{ds.n_items} items, dim {settings['dim']})")
        P, Q = train_bprmf(users, items, ds.n_users, ds.n_items, settings["dim"],
                           show=cfg["show_progress"] and not cfg["quiet"])
        if not torch.isfinite(Q).all():  # never cached, never a model's x_i
            raise UserError(f"BPR-MF on {cfg['dataset']}'s training pairs gave NaN or inf vectors; nothing was written")
        hit = valid_hit_at_10(P, Q, users, items, ds.valid)
        record = {"method": "BPR-MF", "made_with": settings, "pairs": len(users), "valid_hit@10": hit,
                  "dataset": cfg["dataset"], "fingerprint": ds.fingerprint, "key": key}
        train.save(record, path[:-4] + ".json")
        with data.replacing(path) as tmp, open(tmp, "wb") as f:  # last: its presence marks the cache complete
            np.save(f, Q.numpy().astype(np.float32))
        log(f"item vectors: wrote {path}; BPR-MF's own valid Hit@10 (training items left out) = {hit:.4f}")
    else:
        log(f"item vectors: BPR-MF's, frozen, from {path}")
    try:
        vectors = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise data.DataError(f"{path}: not readable as our BPR-MF vectors ({e}); remove it to train them again") from None
    want = (ds.n_items + 1, cfg["embedding_size"])
    why = f"{vectors.shape} vectors, not (items + 1, embedding_size) = {want}" if vectors.shape != want else \
        "NaN or inf" if not np.isfinite(vectors).all() else None
    if why:
        raise data.DataError(f"{path}: holds {why}: not our BPR-MF vectors; remove it to train them again")
    return vectors
