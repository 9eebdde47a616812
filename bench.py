"""Seconds per training epoch on ml-100k, with a breakdown, next to the reference timed in the same run.

    python bench.py                                 # ml-100k, frozen KG (the default)
    python bench.py --kg freebase --freeze_kg False # any train.py option: here a trained KG

Prints
  * our training epoch (train.py's own train_epoch) on RecBole's prefix samples, and a
    --train_mode sequence epoch (the default command's): medians of --time_epochs epochs;
  * the same two epochs with --memory_impl reference (ksr.py alone), the same weights: the
    baseline, and the speed-up of the default's fast memory (kernels.sorted_kv_memory) over it;
  * a breakdown of one prefix step (data, GRU, memory, loss, optimizer), from --batches batches.
Machines are shared and noisy: compare the ratios printed here, not absolute times.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import data
import train


def timeit(fn, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def epoch_seconds(cfg, ds, split, n):
    """Median seconds of n train_epoch calls of a fresh model (same seed: same weights)."""
    torch.manual_seed(0)
    model = train.build_model(cfg, ds)
    opt, gen = train.make_optimizer(model, cfg), torch.Generator().manual_seed(0)
    return timeit(lambda: train.train_epoch(model, opt, split, cfg, "cpu", gen, lambda *a: None), n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--time_epochs", type=int, default=3, help="full epochs to time (median)")
    ap.add_argument("--batches", type=int, default=6, help="batches for the breakdown")
    args, train_argv = ap.parse_known_args()
    cfg = vars(train.parse_args(["--train_mode", "prefix"] + train_argv))  # RecBole's prefix samples
    seq_cfg = vars(train.parse_args(train_argv + ["--train_mode", "sequence"]))  # the default command's
    ds = train.load_data(cfg, log=lambda m: None)
    split, bs = ds.train, cfg["train_batch_size"]
    windows = data.sequence_windows(ds.seqs, split, seq_cfg["MAX_ITEM_LIST_LENGTH"], seq_cfg["window_stride"])
    n_batches = -(-len(split) // bs)
    print(f"{cfg['dataset']} (kg {cfg['kg']}), freeze_kg={cfg['freeze_kg']}: {len(split)} prefix samples in "
          f"{n_batches} batches of {bs}; {len(windows)} windows in batches of {seq_cfg['train_batch_size']}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = {}
    for name, c, s in (("prefix", cfg, split), ("sequence", seq_cfg, windows)):
        for impl in (c["memory_impl"], "reference"):
            rows[name, impl] = epoch_seconds(dict(c, memory_impl=impl), ds, s, args.time_epochs)

    # ---- breakdown of a prefix step, on fixed batches
    torch.manual_seed(0)
    model = train.build_model(cfg, ds)
    opt = train.make_optimizer(model, cfg)
    order = np.random.default_rng(0).permutation(len(split))
    batches = [order[i * bs:(i + 1) * bs] for i in range(min(args.batches, n_batches))]
    parts = {k: [] for k in ("data", "GRU", "memory", "loss", "optimizer")}
    model.train()
    for idx in batches[:1] + batches:  # the first batch twice: a warm-up, dropped below
        t = time.perf_counter()
        seq, lengths, targets = map(torch.as_tensor, split.cut(idx))
        parts["data"].append(time.perf_counter() - t)

        x = model.emb_dropout(model.item_embedding(seq)).detach().requires_grad_()
        t = time.perf_counter()
        h = model.gru(x, lengths)
        h.sum().backward()
        parts["GRU"].append(time.perf_counter() - t)

        if not model.no_memory:
            s = model.read_query(h.detach())
            t = time.perf_counter()
            m = model.memory(model.entity_embedding(seq), lengths, model.relations, s, model.gamma)  # as KSR.forward
            m.sum().backward()
            parts["memory"].append(time.perf_counter() - t)

        p = torch.randn(len(idx), cfg["embedding_size"], requires_grad=True)
        t = time.perf_counter()
        model.loss(p, targets).backward()
        parts["loss"].append(time.perf_counter() - t)

        t = time.perf_counter()
        opt.step()
        parts["optimizer"].append(time.perf_counter() - t)
        opt.zero_grad(set_to_none=True)

    # median seconds per batch (warm-up dropped) x batches per epoch
    parts = {k: statistics.median(v[1:]) * n_batches for k, v in parts.items() if v}
    print(f"\n{'s/epoch (median of ' + str(args.time_epochs) + ')':34}{'ours':>10}{'reference':>11}{'speed-up':>10}")
    for name in ("prefix", "sequence"):
        ours, ref = rows[name, cfg["memory_impl"]], rows[name, "reference"]
        print(f"{name + (' (RecBole' + chr(39) + 's samples)' if name == 'prefix' else ' (the default)'):34}"
              f"{ours:>10.2f}{ref:>11.2f}{ref / ours:>9.2f}x")
    print(f"breakdown of our prefix epoch (median over {len(batches)} batches x {n_batches} batches):")
    for k, v in parts.items():
        print(f"  {k:32}{v:>10.1f}")
    print(f"  {'sum':32}{sum(parts.values()):>10.1f}")


if __name__ == "__main__":
    main()
