"""TransE (Bordes et al. 2013) in plain torch: the pretrained KG vectors KSR reads.

RecBole's KSR needs .ent_feature/.rel_feature files and does not say how to make them;
data.load_dataset calls train_transe when they are missing and writes them in RecBole's
format. h + r ~ t, a margin ranking loss against triples with a corrupted head or tail,
entity vectors on the unit sphere, Adam, a fixed seed.
"""
import contextlib
import time

import numpy as np
import torch


def train_transe(triples, n_entities, n_relations, dim=64, epochs=60, batch_size=4096, margin=1.0,
                 lr=0.01, holdout=0.05, seed=2020, log=print):
    """TransE on (T, 3) integer triples (head, relation, tail). Returns (entity vectors, relation vectors, raw tail Hits@10 on
    the held-out triples). The held-out triples are not trained on.

    Runs on one CPU thread: with more, the gradient of `ent[h]` adds rows in whatever order
    the threads finish, and the vectors (and every model trained on them) would differ from
    run to run and machine to machine. One thread gives the same vectors everywhere.
    """
    with one_thread():
        return _train_transe(triples, n_entities, n_relations, dim, epochs, batch_size, margin, lr, holdout, seed, log)


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block; the caller's thread count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_transe(triples, n_entities, n_relations, dim, epochs, batch_size, margin, lr, holdout, seed, log):
    g = torch.Generator().manual_seed(seed)
    triples = torch.as_tensor(np.asarray(triples), dtype=torch.long)
    perm = torch.randperm(len(triples), generator=g)
    n_test = int(round(holdout * len(triples))) if len(triples) >= 20 else 0
    test, train = triples[perm[:n_test]], triples[perm[n_test:]]
    bound = 6.0 / dim ** 0.5
    ent = (torch.rand(n_entities, dim, generator=g) * 2 - 1) * bound
    rel = (torch.rand(n_relations, dim, generator=g) * 2 - 1) * bound
    rel = rel / rel.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ent.requires_grad_()
    rel.requires_grad_()
    opt = torch.optim.Adam([ent, rel], lr=lr)
    t0 = time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for i in range(0, len(train), batch_size):
            h, r, t = train[order[i:i + batch_size]].T
            with torch.no_grad():  # entities on the unit sphere, as in the paper
                ent.div_(ent.norm(dim=1, keepdim=True).clamp_min(1e-12))
            corrupt = torch.randint(n_entities, h.shape, generator=g)
            head_side = torch.rand(h.shape, generator=g) < 0.5
            h2 = torch.where(head_side, corrupt, h)
            t2 = torch.where(head_side, t, corrupt)
            d_pos = (ent[h] + rel[r] - ent[t]).norm(dim=1)
            d_neg = (ent[h2] + rel[r] - ent[t2]).norm(dim=1)
            loss = torch.relu(margin + d_pos - d_neg).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(h)
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"TransE epoch {epoch + 1}/{epochs}: loss {total / max(len(train), 1):.4f} ({time.time() - t0:.0f}s)")
    with torch.no_grad():
        ent.div_(ent.norm(dim=1, keepdim=True).clamp_min(1e-12))
    ent, rel = ent.detach(), rel.detach()
    return ent.numpy(), rel.numpy(), transe_hits_at_10(ent, rel, test)


@torch.no_grad()
def transe_hits_at_10(ent, rel, test):
    """Raw tail Hits@10: rank the true tail among all entities by ||h + r - e||."""
    if len(test) == 0:
        return float("nan")
    hits = 0
    for i in range(0, len(test), 512):
        h, r, t = test[i:i + 512].T
        d = torch.cdist(ent[h] + rel[r], ent)  # (b, n_entities)
        true = d.gather(1, t[:, None])
        hits += int(((d < true).sum(1) < 10).sum())
    return hits / len(test)
