"""Explain a trained run's recommendations with its knowledge memory.

    python train.py explain --run RUN_DIR --user TOKEN [--topk K] [--recent N] [--plot FILE.png]
    python train.py explain --run RUN_DIR --summary [--plot FILE.png]
    python -m extras.explain ...             (the same)

KSR's read attention w_a says which relation the user's current interest is about, and the
score splits exactly along it. With W_u = [W_h | W_m] (the columns that see h_t and m_t):

    score_i = p_u . q_i = (W_h h_t + b) . q_i  +  sum_a  w_a (W_m v_a) . q_i
                          sequence term            one term per relation a

decompose() computes both parts; tests/test_explain.py checks they add up to the score.
"""
import os
import sys
import tempfile

import numpy as np
import torch

import data
import ksr
import train
from extras.checkpoint import load_checkpoint
from options import DataError, Parser, UsageError, cli, positive
from train import batches, rank_of_target


@torch.no_grad()
def decompose(model, item_seq, lengths):
    """Split p_u into a sequence term and one term per memory slot (call in eval mode), with
    the model's own parts: its GRU and read query, ksr.memory_write and ksr.read_attention.

    Returns p_seq (B, D), p_rel (B, R, D) (p_seq + p_rel.sum(1) is p_u), the read attention
    w (B, R) after the last step, and w after every step (B, L, R), 0 at padding steps.
    """
    h_all = model.gru(model.item_embedding(item_seq), lengths, all_steps=True)  # h_t after every step (B, L, H)
    w_steps = ksr.read_attention(model.relations, model.read_query(h_all), model.gamma)  # (B, L, R)
    steps = torch.arange(item_seq.shape[1], device=item_seq.device)
    w_steps = w_steps * (steps[None, :] < lengths[:, None])[..., None]
    rows = torch.arange(item_seq.shape[0], device=item_seq.device)
    h, w = h_all[rows, lengths - 1], w_steps[rows, lengths - 1]  # (B, H), (B, R)
    V = ksr.memory_write(model.entity_embedding(item_seq), lengths, model.relations)  # (B, R, K)
    W_h, W_m = model.dense_layer_u.weight.split([h.shape[1], V.shape[2]], dim=1)
    p_seq = h @ W_h.T + model.dense_layer_u.bias
    p_rel = w[..., None] * (V @ W_m.T)  # (B, R, D): w_a W_m v_a; sum_a w_a v_a is m_t
    return p_seq, p_rel, w, w_steps


def slot_names(model, ds):
    """One name per memory slot: the KG's relation names, after RecBole's zero-key slot."""
    return (["[PAD] (zero key)"] if model.relations.shape[0] > len(ds.relation_tokens) else []) + list(ds.relation_tokens)


def item_name(ds, i):
    return ds.item_titles[i] if ds.item_titles else f"item {ds.item_tokens[i]}"


@torch.no_grad()
def explain_user(model, ds, uid, topk):
    """Everything `explain --user` shows, for user id `uid`'s test sequence, as a dict."""
    rows = np.flatnonzero(ds.test.users == uid)
    if not len(rows):
        raise DataError(f"user {ds.user_tokens[uid]} has no test sample (fewer than 3 interactions); "
                             "explain needs one")
    seq, lengths, targets = map(torch.as_tensor, ds.test.cut(rows[:1]))
    model.eval()
    p_seq, p_rel, w, w_steps = decompose(model, seq, lengths)
    q = model.item_representations()  # q_i: (N + 1, D)
    scores = model.full_scores(model(seq, lengths)[0])[0]
    top = torch.topk(scores, topk).indices
    seq_term = (p_seq[0] @ q[top].T)  # (k,)
    rel_terms = (p_rel[0] @ q[top].T).T  # (k, R)
    target = int(targets[0])
    n = int(lengths[0])
    return {"user": ds.user_tokens[uid], "history": seq[0, :n].tolist(), "target": target,
            "target_rank": int(rank_of_target(scores[None], torch.tensor([target]))[0]),
            "attention": w[0].tolist(), "attention_steps": w_steps[0, :n].tolist(),
            "top": top.tolist(), "scores": scores[top].tolist(),
            "sequence_term": seq_term.tolist(), "relation_terms": rel_terms.tolist()}


@torch.no_grad()
def explain_summary(model, ds, cfg):
    """Over all test users: the mean read attention per memory slot, how often each slot is
    the top one, and how far each part of the score moves items apart: the spread (standard
    deviation over all items) of the sequence term and of the memory term, averaged over users.
    A term that is the same for every item changes no ranking, however large it is."""
    model.eval()
    ws, seq_spread, mem_spread = [], [], []
    q = model.item_representations()[1:]  # real items
    for _, seq, lengths, _ in batches(ds.test, cfg["eval_batch_size"]):
        p_seq, p_rel, w, _ = decompose(model, seq, lengths)
        seq_spread.append((p_seq @ q.T).std(1))
        mem_spread.append((p_rel.sum(1) @ q.T).std(1))
        ws.append(w)
    w = torch.cat(ws)  # (users, R)
    top_share = torch.bincount(w.argmax(1), minlength=w.shape[1]).double() / len(w)
    return w.mean(0).tolist(), top_share.tolist(), torch.cat(seq_spread).mean().item(), torch.cat(mem_spread).mean().item()


def print_explanation(ex, ds, names, recent, shown):
    hist = ex["history"]
    print(f"user {ex['user']}: {len(hist)} items before the held-out test item; the last {min(recent, len(hist))} (oldest first):")
    for i in hist[-recent:]:
        print(f"    {item_name(ds, i)}")
    print(f"held-out next item: {item_name(ds, ex['target'])} (rank {ex['target_rank']} of {ds.n_items})")
    print("read attention over relations after the last item (w_a = softmax(gamma s_t . r_a)):")
    for a in sorted(range(len(names)), key=lambda a: -ex["attention"][a])[:shown]:
        print(f"  {ex['attention'][a]:7.3f}  {names[a]}")
    print(f"top-{len(ex['top'])} recommendations; score = sequence term + one term per relation "
          f"(w_a (W_m v_a) . q_i), largest relation terms shown:")
    for r, (i, s, st, terms) in enumerate(zip(ex["top"], ex["scores"], ex["sequence_term"], ex["relation_terms"]), 1):
        big = sorted(range(len(names)), key=lambda a: -abs(terms[a]))[:3]
        parts = ", ".join(f"{names[a]} {terms[a]:+.2f}" for a in big)
        mark = "  <- the held-out item" if i == ex["target"] else ""
        print(f"  {r:2d}. {item_name(ds, i)[:40]:40s} {s:7.2f} = {st:+.2f} + memory {sum(terms):+.2f} ({parts}){mark}")


def plot_explanation(ex, ds, names, path, recent):
    plt = _pyplot()
    steps = ex["attention_steps"][-recent:]
    labels = [item_name(ds, i)[:28] for i in ex["history"][-recent:]]
    terms = np.array(ex["relation_terms"])  # (k, R)
    keep = sorted(np.argsort(-np.abs(terms).sum(0))[:8])  # the slots with the largest terms
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.32 * max(len(steps), len(ex["top"])) + 2.5),
                                   gridspec_kw={"width_ratios": [len(names) + 2, len(keep) + 2]})
    im = ax1.imshow(np.array(steps), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    ax1.set_yticks(range(len(labels)), labels, fontsize=7)
    ax1.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax1.set_title(f"user {ex['user']}: read attention after each item", fontsize=9)
    fig.colorbar(im, ax=ax1, fraction=0.04)
    cols = terms[:, keep]
    lim = max(np.abs(cols).max(), 1e-6)
    im2 = ax2.imshow(cols, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)  # own scale: the sequence term is larger
    ax2.set_yticks(range(len(ex["top"])), [f"{item_name(ds, i)[:24]} (seq {s:+.1f})" for i, s in zip(ex["top"], ex["sequence_term"])],
                   fontsize=7)
    ax2.set_xticks(range(len(keep)), [names[a] for a in keep], rotation=70, ha="right", fontsize=7)
    ax2.set_title("per-relation score terms of the top items", fontsize=9)
    fig.colorbar(im2, ax=ax2, fraction=0.04)
    _save_figure(fig, path)


def plot_summary(names, mean_w, path, title):
    plt = _pyplot()
    order = np.argsort(mean_w)
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1.5))
    ax.barh(range(len(names)), np.array(mean_w)[order])
    ax.set_yticks(range(len(names)), [names[a] for a in order], fontsize=7)
    ax.set_xlabel("mean read attention over test users")
    ax.set_title(title, fontsize=9)
    _save_figure(fig, path)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("explain.py: error: --plot needs matplotlib, an optional dependency: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path):
    fig.tight_layout()
    with data.replacing(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    _pyplot().close(fig)
    print(f"wrote {path}")


def explain(argv):
    """explain.py --run RUN_DIR (--user TOKEN [--topk K] | --summary) [--plot FILE.png]"""
    if train.launched():
        raise UsageError("explain.py: error: explain runs in one process; start it with python, not torchrun")
    ap = Parser(prog="explain.py", description="Explain a trained run's recommendations with its knowledge memory.")
    ap.add_argument("--run", required=True, help="a training run's folder (its --out_dir)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user token (the user_id column of the .inter file)")
    who.add_argument("--summary", action="store_true", help="mean read attention per relation over all test users")
    ap.add_argument("--topk", type=positive(int), default=10)
    ap.add_argument("--recent", type=positive(int), default=10, help="how many of the user's last items to show")
    ap.add_argument("--plot", metavar="FILE.png", help="also draw a PNG (needs matplotlib)")
    ap.add_argument("--data_path", default=None, help="where the dataset lives, if not where the run read it")
    args = ap.parse_args(argv)
    if args.plot:  # fail before the work: matplotlib missing, or a place the PNG cannot go
        _pyplot()
        folder = os.path.dirname(os.path.abspath(args.plot))
        if os.path.isdir(args.plot) or not os.path.isdir(folder):
            raise UsageError(f"explain.py: error: --plot {args.plot}: " + ("is a folder; give a file name" if os.path.isdir(args.plot)
                             else f"the folder {folder} does not exist"))
        if os.path.isfile(args.plot):  # replace an earlier plot, never a file the user made
            with open(args.plot, "rb") as f:
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    raise UsageError(f"explain.py: error: --plot {args.plot}: exists and is not a PNG; choose another name")
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise UsageError(f"explain.py: error: --plot {args.plot}: cannot write in {folder} ({e.strerror})") from None
    ckpt = os.path.join(args.run, "model.pt")
    if not os.path.exists(ckpt):
        raise UsageError(f"explain.py: error: --run: {ckpt}: not found (give the --out_dir of a finished training run)")
    overrides = {"device": "cpu", "kernels": "auto"} | ({"data_path": args.data_path} if args.data_path else {})
    cfg, ds, model, _ = load_checkpoint(ckpt, overrides, log=lambda m: print(m, file=sys.stderr))  # data messages off stdout
    if cfg["no_memory"]:
        raise UsageError(f"explain.py: error: {args.run} was trained with --no_memory: it has no knowledge memory to explain")
    names = slot_names(model, ds)
    print(f"run {args.run}: {cfg['dataset']}, kg={cfg['kg']}, {len(names)} memory slots, train_mode {cfg['train_mode']}")
    if args.summary:
        mean_w, top_share, seq_spread, mem_spread = explain_summary(model, ds, cfg)
        print(f"read attention over {len(ds.test)} test users (after each user's last item), by mean:")
        print(f"  {'mean w':>7}  {'top for':>8}  relation")
        for a in sorted(range(len(names)), key=lambda a: -mean_w[a]):
            print(f"  {mean_w[a]:7.3f}  {100 * top_share[a]:7.1f}%  {names[a]}")
        print(f"how far each part of the score moves items apart (std over all items, mean over users): "
              f"sequence term {seq_spread:.2f}, memory term {mem_spread:.2f}")
        if args.plot:
            plot_summary(names, mean_w, args.plot, f"{cfg['dataset']}, kg={cfg['kg']}: where the read looks")
        return 0
    if args.user not in ds.user_tokens[1:]:
        inter = os.path.join(cfg["data_path"], cfg["dataset"], cfg["dataset"] + ".inter")
        raise UsageError(f"explain.py: error: --user {args.user!r}: no such user in {inter} (valid tokens are its "
                         f"user_id column, e.g. {', '.join(ds.user_tokens[1:4])}; --summary needs none)")
    ex = explain_user(model, ds, ds.user_tokens.index(args.user), min(args.topk, ds.n_items))
    print_explanation(ex, ds, names, args.recent, shown=min(len(names), 8))
    if args.plot:
        plot_explanation(ex, ds, names, args.plot, args.recent)
    return 0


def main(argv=None):
    return cli(explain, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
