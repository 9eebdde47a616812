"""TransE (Bordes et al. 2013) in plain torch: the pretrained KG vectors KSR reads.

RecBole's KSR needs .ent_feature/.rel_feature files and does not say how to make them;
data.load_dataset calls train_transe when they are missing and writes them in RecBole's
format. h + r ~ t, a margin ranking loss against triples with a corrupted head or tail,
entity vectors on the unit sphere, a fixed seed, one of two optimisers (--transe_optimizer):

  lazy   Adam without momentum on the rows a batch uses (LazyAdam, the same step as a dense
         one): an epoch costs ~ triples x dim, not triples x entities x dim, so 1M triples fit.
  dense  torch's Adam (beta1 0.9) on the whole tables, every entity renormalised every batch:
         momentum keeps moving a row for ~10 steps after its gradient, which no sparse update
         can do cheaply. Costs entities x dim per batch: for small KGs.
  auto   (the default) dense up to DENSE_MAX_TRIPLES triples, lazy above: on ml-100k's
         KGs the dense vectors gave KSR the better valid MRR@10 (docs/results.md).

Hits@10 ranks a sample of held-out triples.
"""
import contextlib
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

HITS_SAMPLE = 2000  # held-out triples that Hits@10 ranks against every entity
# --transe_optimizer auto: dense for a KG of at most this many triples, lazy above. Chosen on KSR's valid MRR@10
# over 5 seeds (docs/results.md): on both ml-100k KGs (6,253 and 91,631 triples) dense Adam gave the higher valid
# mean. A dense epoch costs (triples / batch) x entities x dim, growing with both; the lazy one is what docs/scale.md
# measured at 1M triples (3.6 s an epoch).
DENSE_MAX_TRIPLES = 100_000
LEARNING_RATES = {"lazy": 0.005, "dense": 0.01}  # --transe_learning_rate's default for each
# fixed here, not options: (dim, epochs, lr, seed) are, with their defaults in options.DEFAULTS
BATCH_SIZE, MARGIN, HOLDOUT = 4096, 1.0, 0.05


OPTIMIZERS = {"lazy": "Adam without momentum, rows of the batch only (LazyAdam, beta2 0.999)",
              "dense": "Adam (beta1 0.9, beta2 0.999) on the whole tables, every entity renormalised every batch"}


def resolve(settings, n_triples):
    """options.transe_settings with optimizer "auto" and learning_rate None made concrete for a KG of n_triples."""
    optimizer = settings["optimizer"]
    if optimizer == "auto":
        optimizer = "dense" if n_triples <= DENSE_MAX_TRIPLES else "lazy"
    return {**settings, "optimizer": optimizer, "learning_rate": settings["learning_rate"] or LEARNING_RATES[optimizer]}


def record(dim, epochs, lr, seed, optimizer):
    """What vectors of train_transe(dim, epochs, lr, seed, optimizer) are made with: data.py writes it
    beside them and trains again when a cached record differs (a changed method or setting)."""
    return {"method": "TransE", "optimiser": OPTIMIZERS[optimizer], "dim": dim, "epochs": epochs, "learning_rate": lr,
            "seed": seed, "batch_size": BATCH_SIZE, "margin": MARGIN, "holdout": HOLDOUT, "hits_sample": HITS_SAMPLE}


def train_transe(triples, n_entities, n_relations, *, dim, epochs, lr, seed, optimizer="lazy", batch_size=BATCH_SIZE,
                 margin=MARGIN, holdout=HOLDOUT, log=print, show=True):
    """TransE on (T, 3) integer triples (head, relation, tail). Returns (entity vectors, relation vectors, raw tail
    Hits@10 on a sample of n held-out triples, n = min(HITS_SAMPLE = 2000, number held out)). The held-out triples
    (a `holdout` share) are not trained on.

    Runs on one CPU thread: with more, the gradient of an entity that a batch uses several times
    adds its rows in whatever order the threads finish, and the vectors (and every model trained
    on them) would differ from run to run and machine to machine. One thread gives the same
    vectors everywhere.
    """
    with one_thread():
        return _train_transe(triples, n_entities, n_relations, dim, epochs, batch_size, margin, lr, holdout, seed,
                             optimizer, log, show)


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block; the caller's thread count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def unit(x):
    """x with each row scaled to length 1 (the unit sphere)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _train_transe(triples, n_entities, n_relations, dim, epochs, batch_size, margin, lr, holdout, seed, optimizer, log, show):
    g = torch.Generator().manual_seed(seed)
    triples = torch.as_tensor(np.asarray(triples), dtype=torch.long)
    perm = torch.randperm(len(triples), generator=g)
    n_test = int(round(holdout * len(triples))) if len(triples) >= 20 else 0
    test, train = triples[perm[:n_test]], triples[perm[n_test:]]
    bound = 6.0 / dim ** 0.5
    ent = (torch.rand(n_entities, dim, generator=g) * 2 - 1) * bound
    rel = unit((torch.rand(n_relations, dim, generator=g) * 2 - 1) * bound)
    if optimizer == "lazy":
        ent_adam, rel_adam = LazyAdam(ent, lr), LazyAdam(rel, lr)
    else:
        adam = torch.optim.Adam([ent.requires_grad_(), rel.requires_grad_()], lr=lr)
    loss_of = lambda eh, er, et, eh2, et2: torch.relu(margin + (eh + er - et).norm(dim=1)
                                                      - (eh2 + er - et2).norm(dim=1)).mean()  # margin ranking
    t0 = time.time()
    for epoch in tqdm(range(epochs), disable=None if show else True, leave=False, unit="epoch", desc="TransE",
                      file=sys.stderr):  # show: a bar where stderr is a terminal (None)
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for i in range(0, len(train), batch_size):
            # index_select rather than table[idx]: the same rows, several times faster on CPU
            h, r, t = train.index_select(0, order[i:i + batch_size]).T
            corrupt = torch.randint(n_entities, h.shape, generator=g)
            head_side = torch.rand(h.shape, generator=g) < 0.5
            h2 = torch.where(head_side, corrupt, h)
            t2 = torch.where(head_side, t, corrupt)
            if optimizer == "dense":
                with torch.no_grad():
                    ent.copy_(unit(ent))  # every entity on the unit sphere, as in the paper
                loss = loss_of(ent[h], rel[r], ent[t], ent[h2], ent[t2])
                adam.zero_grad()
                loss.backward()
                adam.step()
            else:  # lazy: the batch's own rows, copied out: x[at] are the vectors of h, t, h2, t2; y[r_at] of r
                rows, at = torch.cat([h, t, h2, t2]).unique(return_inverse=True)
                rel_rows, r_at = r.unique(return_inverse=True)
                x = unit(ent.index_select(0, rows)).requires_grad_()  # on the unit sphere, as in the paper
                y = rel.index_select(0, rel_rows).requires_grad_()
                eh, et, eh2, et2 = x.index_select(0, at).view(4, len(h), dim)
                loss = loss_of(eh, y.index_select(0, r_at), et, eh2, et2)
                loss.backward()
                ent_adam.step(rows, x.detach(), x.grad)
                rel_adam.step(rel_rows, y.detach(), y.grad)
            total += loss.item() * len(h)
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            with tqdm.external_write_mode():  # the bar cleared around the log line, then drawn again
                log(f"TransE epoch {epoch + 1}/{epochs}: loss {total / max(len(train), 1):.4f} ({time.time() - t0:.0f}s)")
    ent, rel = unit(ent.detach()), rel.detach()
    # perm is a seeded shuffle, so the first HITS_SAMPLE held-out triples are a uniform sample of them
    return ent.numpy(), rel.numpy(), transe_hits_at_10(ent, rel, test[:HITS_SAMPLE])


class LazyAdam:
    """Adam without momentum (beta1 = 0), on the rows of a table that a step names, and exactly
    equal to it run densely on the whole table (tests/test_data.py proves it).

    Why no momentum: with it, dense Adam keeps moving a row for ~1/(1 - beta1) = 10 steps after
    its gradient, and a sparse update cannot do that without touching every row (SparseAdam and
    the like just skip it, so a rarely seen entity moves up to 10x less than dense Adam would
    move it, and the sparse update is some other optimiser). With beta1 = 0 a row without a
    gradient does not move at all; only its second moment v decays, by beta2 per step, and that
    is caught up when the row is next used: v = beta2^(steps since its last update) v. So the
    sparse step is the dense step. (On ml-100k's small KGs KSR does better with dense Adam's
    vectors, beta1 = 0.9 and every row moving every step: docs/results.md; hence auto.)
    """

    def __init__(self, w, lr, beta2=0.999, eps=1e-8):
        self.w, self.lr, self.beta2, self.eps, self.n = w, lr, beta2, eps, 0
        self.v = torch.zeros_like(w)
        self.last = torch.zeros(len(w), dtype=torch.long)  # the step each row's v was last updated

    def step(self, rows, x, grad):
        """w[rows] = x - Adam's step for `grad`; rows unique, x and grad (len(rows), dim). x is overwritten."""
        self.n += 1
        idle = (self.n - self.last.index_select(0, rows)).to(grad.dtype)[:, None]  # v's decay since then
        v = self.v.index_select(0, rows).mul_(self.beta2 ** idle).addcmul_(grad, grad, value=1 - self.beta2)
        denom = (v / (1 - self.beta2 ** self.n)).sqrt_().add_(self.eps)
        x.addcdiv_(grad, denom, value=-self.lr)
        self.last.index_fill_(0, rows, self.n)
        # write the rows back through numpy views of the tables: on one CPU thread numpy's row
        # assignment is twice as fast as index_copy_, and these writes were a third of a batch
        r = rows.numpy()
        for table, new in ((self.v, v), (self.w, x)):
            table.numpy()[r] = new.numpy()


@torch.no_grad()
def transe_hits_at_10(ent, rel, test):
    """Raw tail Hits@10 of the (n, 3) triples `test`: rank the true tail among all entities by ||h + r - e||.
    Costs n x entities x dim; train_transe passes a sample of at most HITS_SAMPLE held-out triples."""
    if len(test) == 0:
        return float("nan")
    hits, step = 0, max(1, 2 ** 24 // max(len(ent), 1))  # distance blocks of at most 2^24 floats (64 MB)
    e2 = (ent * ent).sum(1)
    for i in range(0, len(test), step):
        h, r, t = test[i:i + step].T
        # ||q - e||^2 - ||q||^2 = ||e||^2 - 2 q.e, (b, n_entities): each row in the order of ||q - e||
        d = torch.addmm(e2, ent[h] + rel[r], ent.T, alpha=-2)
        true = d.gather(1, t[:, None])
        hits += int(((d < true).sum(1) < 10).sum())
    return hits / len(test)
