"""Seconds per training epoch on ml-100k, with a breakdown, next to baselines timed in the same run.

    python bench.py                                 # ml-100k, frozen KG (the default)
    python bench.py --kg freebase --freeze_kg False # any train.py option: here a trained KG

Prints
  * our training epoch (train.py's own train_epoch) on RecBole's prefix samples, and a
    --train_mode sequence epoch: medians of --epochs epochs;
  * a breakdown of one step (data, GRU, memory, loss, optimizer), from --batches batches;
  * baselines over the same batches: a GRU-only epoch with nn.GRU over all 50 padded steps
    (what RecBole runs), and the plain padded computation of the whole model (the same
    weights with packed_gru=False and memory_impl="reference": ksr.py's reference alone).
Machines are shared and noisy: compare the ratios printed here, not absolute times.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import data
import distributed
import kernels
import ksr
import train


def timeit(fn, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--time_epochs", type=int, default=3, help="full epochs to time (median)")
    ap.add_argument("--batches", type=int, default=6, help="batches for the breakdown and the baselines")
    args, train_argv = ap.parse_known_args()
    # RecBole's prefix samples: the protocol the breakdown and baselines are about
    cfg = vars(train.parse_args(["--train_mode", "prefix"] + train_argv))
    kernels.keep_freed_memory()
    torch.manual_seed(0)
    ds = train.load_data(cfg, log=lambda m: None)
    split, bs = ds.train, cfg["train_batch_size"]
    n_batches = -(-len(split) // bs)
    model = train.build_model(cfg, ds)
    opt = train.make_optimizer(model, cfg)
    print(f"{cfg['dataset']} (kg {cfg['kg']}), freeze_kg={cfg['freeze_kg']}: {len(split)} training samples, "
          f"{n_batches} batches of {bs}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    # ---- our epoch, exactly as train.py runs it
    t0 = time.perf_counter()
    V_cache = train.memory_cache(model, split, False, "cpu", log=lambda m: None)
    cache_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    step = distributed.TrainStep(model)  # one process: the model's own loss
    epoch_s = timeit(lambda: train.train_epoch(model, step, opt, split, cfg, "cpu", gen, lambda *a: None, V_cache), args.time_epochs)

    # ---- a --train_mode sequence epoch (windows, its own batch size), for comparison
    seq_cfg = vars(train.parse_args(train_argv + ["--train_mode", "sequence"]))
    windows = data.sequence_windows(ds.seqs, split, cfg["MAX_ITEM_LIST_LENGTH"])
    seq_model = train.build_model(seq_cfg, ds)
    seq_opt = train.make_optimizer(seq_model, seq_cfg)
    t0 = time.perf_counter()
    seq_cache = train.memory_cache(seq_model, windows, True, "cpu", log=lambda m: None)
    seq_cache_s = time.perf_counter() - t0
    seq_step = distributed.TrainStep(seq_model)
    seq_epoch_s = timeit(lambda: train.train_epoch(seq_model, seq_step, seq_opt, windows, seq_cfg, "cpu", gen, lambda *a: None, seq_cache),
                         args.time_epochs)
    del seq_cache, seq_model

    # ---- the same weights through ksr.py's reference alone: nn.GRU over padding, kv_memory
    plain = train.build_model(dict(cfg, memory_impl="reference"), ds)
    plain.load_state_dict(model.state_dict())
    plain.gru.packed = False
    plain_opt = train.make_optimizer(plain, cfg)

    # ---- breakdown of a step, on fixed batches
    order = np.random.default_rng(0).permutation(len(split))
    batches = [order[i * bs:(i + 1) * bs] for i in range(min(args.batches, n_batches))]

    def get(idx):
        seq, lengths, targets = map(torch.as_tensor, split.cut(idx))
        V = V_cache[torch.as_tensor(idx)] if V_cache is not None else None
        return seq, lengths, targets, V

    parts = {k: [] for k in ("data", "GRU", "memory", "loss", "optimizer")}
    base = {"nn.GRU, 50 padded steps": [], "plain padded model": []}
    model.train()
    for idx in batches[:1] + batches:  # the first batch twice: a warm-up, dropped below
        t = time.perf_counter()
        seq, lengths, targets, V = get(idx)
        parts["data"].append(time.perf_counter() - t)

        x = model.item_embedding(seq).detach().requires_grad_()
        t = time.perf_counter()
        h = model.gru(x, lengths, dropout=model.emb_dropout)
        h.sum().backward()
        parts["GRU"].append(time.perf_counter() - t)

        if not model.no_memory:
            s = model.read_query(h.detach())
            t = time.perf_counter()
            e = model.entity_embedding(seq)  # the memory as KSR.forward computes it
            m = ksr.memory_read(V, model.relations, s, model.gamma) if V is not None else \
                model.kv_memory(e, lengths, model.relations, s, model.gamma)
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

        # baselines on the same batch
        t = time.perf_counter()
        plain.gru(plain.item_embedding(seq), lengths, dropout=plain.emb_dropout).sum().backward()
        base["nn.GRU, 50 padded steps"].append(time.perf_counter() - t)
        t = time.perf_counter()
        plain.loss(plain(seq, lengths), targets).backward()
        plain_opt.step()
        base["plain padded model"].append(time.perf_counter() - t)
        plain_opt.zero_grad(set_to_none=True)

    # median seconds per batch (warm-up dropped) x batches per epoch
    parts = {k: statistics.median(v[1:]) * n_batches for k, v in parts.items() if v}
    base = {k: statistics.median(v[1:]) * n_batches for k, v in base.items()}
    print(f"\n{'':34}{'s/epoch':>10}")
    print(f"{'ours: prefix epoch (median of ' + str(args.time_epochs) + ')':34}{epoch_s:>10.1f}   (RecBole's samples)")
    if V_cache is not None:
        print(f"{'  + memory cache, once per run':34}{cache_s:>10.1f}")
    print(f"{'ours: --train_mode sequence epoch':34}{seq_epoch_s:>10.1f}   ({len(windows)} windows, batch "
          f"{seq_cfg['train_batch_size']}; = {seq_epoch_s / epoch_s:.2f} x the prefix epoch)")
    if seq_cache_s > 0.05:
        print(f"{'  + memory cache, once per run':34}{seq_cache_s:>10.1f}")
    print(f"breakdown (median over {len(batches)} batches x {n_batches} batches):")
    for k, v in parts.items():
        print(f"  {k:32}{v:>10.1f}")
    print(f"  {'sum':32}{sum(parts.values()):>10.1f}")
    print("baselines, same batches:")
    for k, v in base.items():
        print(f"  {k:32}{v:>10.1f}   = {v / epoch_s:.2f} x our whole epoch")


if __name__ == "__main__":
    main()
