"""Ask a trained model what to recommend: to a user of the data (their whole history, train, valid and
test items), after any list of items (a person not in the data), or to every user at once.

    python train.py recommend runs/X/model.pt --user 196 [--k 10] [--keep_seen] [--why] [--json]
    python train.py recommend runs/X/model.pt --items 50,172,181      # the dataset's item tokens, oldest first
    python train.py recommend runs/X/model.pt --users all --out top10.tsv

From Python, the same: the model's full_scores over every item, the k best (ties: the smaller id first,
as the evaluation ranks them):

    from extras.recommend import ksr_load, recommend
    model, ds = ksr_load("runs/X/model.pt")
    recommend(model, ds, items=["50", "172", "181"], k=10)    # [(item token, score), ...]

Items already in the sequence are left out unless keep_seen (the evaluation protocol keeps them).
"""
import json
import sys

import numpy as np
import torch
from tqdm import tqdm

import data
from extras.checkpoint import load_checkpoint
from extras.explain import decompose, item_name, slot_names
from options import DataError, Parser, UsageError, cli, positive


def ksr_load(path, data_path=None, log=lambda m: None, quiet=False):
    """(model, dataset) of a saved model.pt, the model in eval mode on the CPU; the data it was trained
    on (refused if it changed since: options.DataError). quiet: no progress bar (TransE's, if its vectors are gone)."""
    overrides = {"device": "cpu", "quiet": quiet} | ({"data_path": data_path} if data_path else {})
    cfg, ds, model, _ = load_checkpoint(path, overrides, log)
    model.max_len = cfg["MAX_ITEM_LIST_LENGTH"]  # the inputs it was trained on: a longer sequence's last items
    return model.eval(), ds


def item_ids(ds, items):
    """Item ids (1..N) of `items`: the dataset's tokens (str), or ids (int); ValueError names a bad one."""
    index = {t: i for i, t in enumerate(ds.item_tokens) if i}
    ids = []
    for x in items:
        i = x if isinstance(x, (int, np.integer)) else index.get(str(x))
        if i is None or not 1 <= i <= ds.n_items:
            known = f"ids are 1..{ds.n_items}" if isinstance(x, (int, np.integer)) else \
                f"item tokens are its item_id column, e.g. {', '.join(ds.item_tokens[1:4])}"
            raise ValueError(f"no item {x!r} in {ds.name} ({known})")
        ids.append(int(i))
    if not ids:
        raise ValueError("an empty list of items: give at least one, oldest first")
    return ids


def user_items(ds, user):
    """The item ids of a user of the data (a token), in time order: train, valid and test items."""
    if user not in ds.user_tokens[1:]:
        raise ValueError(f"no user {user!r} in {ds.name} (user tokens are its user_id column, e.g. "
                         f"{', '.join(ds.user_tokens[1:4])})")
    if ds.seqs is None:
        raise ValueError(f"{ds.name} was read from pre-split files (benchmark_filename): no user has a history "
                         f"here; give --items")
    return ds.seqs[ds.user_tokens.index(user)].tolist()


@torch.no_grad()
def top_items(model, sequences, k, keep_seen=False):
    """For each sequence of item ids: the k best items and their scores, (n, k) each, in one batched pass."""
    if not 1 <= k <= model.n_items:
        raise ValueError(f"k must be in 1..{model.n_items} (the number of items), got {k}")
    cut = [s[-getattr(model, "max_len", len(s)):] for s in sequences]
    lengths = torch.tensor([len(s) for s in cut])
    seq = torch.zeros(len(cut), int(lengths.max()), dtype=torch.int64)
    for b, s in enumerate(cut):
        seq[b, :len(s)] = torch.tensor(s)
    scores = model.full_scores(model(seq, lengths)[0])  # (n, N + 1), the padding item -inf
    if not keep_seen:
        for b, s in enumerate(sequences):
            scores[b, s] = float("-inf")
    if not torch.isfinite(scores[:, 1:]).any(1).all() or scores.isnan().any():
        raise DataError("the model's scores are NaN, or every item is seen: nothing to recommend")
    order = torch.sort(scores, dim=1, descending=True, stable=True)  # ties: the smaller id first
    return order.indices[:, :k], order.values[:, :k]


def recommend(model, ds, items=None, user=None, k=10, keep_seen=False):
    """[(item token, score), ...]: the k best items after `items` (tokens or ids, oldest first), or
    after a user's whole history (`user`, a token); fewer where fewer than k items are left."""
    seq = user_items(ds, user) if user is not None else item_ids(ds, items or [])
    top, scores = top_items(model, [seq], k, keep_seen)
    return [(ds.item_tokens[i], s) for i, s in zip(top[0].tolist(), scores[0].tolist()) if s > float("-inf")]


def why(model, ds, seq, top):
    """For each recommended item: the memory slot whose term adds most to its score; and the read
    attention over the slots after the sequence (explain.decompose)."""
    cut = seq[-model.max_len:]
    p_seq, p_rel, w, _ = decompose(model, torch.tensor([cut]), torch.tensor([len(cut)]))
    terms = p_rel[0] @ model.item_representations(torch.tensor(top)).T  # (R, k)
    names = slot_names(model, ds)
    return [names[a] for a in terms.argmax(0).tolist()], dict(zip(names, w[0].tolist()))


def write_all(model, ds, k, keep_seen, path, batch=1024, show=False):
    """Every user's top k, one full-ranking pass in batches: a TSV of user, rank, item, score."""
    users = [u for u in range(1, ds.n_users + 1) if len(ds.seqs[u])]
    with data.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("user\trank\titem\tscore\n")
        for b in tqdm(range(0, len(users), batch), disable=not show, leave=False, unit="batch", file=sys.stderr):
            chunk = users[b:b + batch]
            top, scores = top_items(model, [ds.seqs[u].tolist() for u in chunk], k, keep_seen)
            for u, items, values in zip(chunk, top.tolist(), scores.tolist()):
                f.writelines(f"{ds.user_tokens[u]}\t{r}\t{ds.item_tokens[i]}\t{s:.6g}\n"
                             for r, (i, s) in enumerate(zip(items, values), 1) if s > float("-inf"))
    return len(users)


def run(argv):
    ap = Parser(prog="train.py recommend", description="What a trained model recommends.")
    ap.add_argument("checkpoint", help="a run's model.pt")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user of the data (its token): their whole history is the sequence")
    who.add_argument("--items", help="item tokens, comma-separated, oldest first: any sequence")
    who.add_argument("--item_ids", help="the same as item ids (1..N)")
    who.add_argument("--users", choices=["all"], help="every user: needs --out")
    ap.add_argument("--k", type=positive(int), default=10)
    ap.add_argument("--keep_seen", action="store_true", help="keep the sequence's own items (as the evaluation does)")
    ap.add_argument("--why", action="store_true", help="each item's strongest memory slot, and the read attention")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--out", help="with --users all: the TSV to write")
    ap.add_argument("--data_path", help="where the dataset lives, if not where the run read it")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if bool(args.users) != bool(args.out):
        ap.error("--users all and --out go together")
    try:
        model, ds = ksr_load(args.checkpoint, args.data_path, log=lambda m: print(m, file=sys.stderr), quiet=args.quiet)
    except DataError as e:
        ap.error(str(e))
    if args.why and model.no_memory:
        ap.error("--why: the model was trained with --no_memory: it has no knowledge memory")
    try:
        if args.users:
            n = write_all(model, ds, args.k, args.keep_seen, args.out, show=not args.quiet and sys.stderr.isatty())
            print(f"wrote the top {args.k} of {n} users to {args.out}", file=sys.stderr)
            return 0
        if args.user is not None:
            seq = user_items(ds, args.user)
        else:
            given = args.items if args.items is not None else args.item_ids
            seq = item_ids(ds, [x.strip() if args.items is not None else int(x) for x in given.split(",") if x.strip()])
        top, scores = top_items(model, [seq], args.k, args.keep_seen)
    except ValueError as e:
        ap.error(str(e))
    top, scores = top[0].tolist(), scores[0].tolist()
    slots, attention = why(model, ds, seq, top) if args.why else (None, None)
    rows = [dict(rank=r, item=ds.item_tokens[i], title=item_name(ds, i), score=s) | ({"slot": slots[r - 1]} if slots else {})
            for r, (i, s) in enumerate(zip(top, scores), 1) if s > float("-inf")]  # fewer than k: every unseen item
    if args.json:
        print(json.dumps(dict(sequence=[ds.item_tokens[i] for i in seq], keep_seen=args.keep_seen, top=rows)
                         | ({"attention": attention} if attention else {})))
        return 0
    print(f"{len(seq)} items in the sequence; the top {args.k}" + ("" if args.keep_seen else ", its own items left out")
          + (f"; read attention: " + ", ".join(f"{n} {w:.2f}" for n, w in attention.items()) if attention else "") + ":")
    for row in rows:
        print(f"  {row['rank']:3d}. {row['item']:>8}  {row['title'][:50]:50s} {row['score']:8.3f}"
              + (f"  ({row['slot']})" if slots else ""))
    return 0


def main(argv=None):
    return cli(run, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
