"""Where the default command's training epoch goes, against what this machine can do.

    python -m bench.epoch                                    # the default command's epoch
    python -m bench.epoch --kg freebase --batch_sizes 16,64  # any train.py option, other batch sizes

Prints, all measured in this one run (machines are shared and noisy: compare within a run):
  * two peaks, float32 GFLOP/s at 1 thread and at all of them (a VM does not tell its clock, so
    the nominal cores x clock x FMA width cannot be read): torch's BLAS (the best of a 2048 x
    2048 matmul), and the compiled kernels' register block (product_gflops, in
    cache), which is higher where torch's BLAS does not use the CPU's widest vectors (MKL takes
    its AVX2 path on AMD's AVX-512 CPUs);
  * two floors: the floating-point work an epoch must do (its matrix products, counted from its
    shapes by epoch_flops) / each peak. The BLAS floor is the issue's yardstick (what torch's
    own products reach here); only the higher peak's floor bounds every implementation;
  * seconds per epoch (train.train_epoch, median of --time_epochs rounds after a warm-up round;
    each round times every setting once, in turn) at all threads and at 1: the distance to the
    floor, and what the second core buys;
  * the share of each part of a step, each timed alone (forward + backward) on the same batches:
    batch cutting, embeddings, GRU, memory, the scores and softmax (the CE loss), W_u, optimizer;
    the whole step less their sum is "autograd and glue" (a few % either way: each part alone
    pays a backward call of its own);
  * the same epoch with --kernels reference (ksr.py alone) and --kernels torch: what the fast paths buy;
  * seconds per epoch and GFLOP/s at each of --batch_sizes.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import data
import kernels
import train


def median_seconds(fn, n, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_gflops(threads):
    """The best GFLOP/s of a float32 2048 x 2048 matmul on `threads` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = min(median_seconds(lambda: a @ b, 5, warmup=2) for _ in range(3))
    torch.set_num_threads(old)
    return 2 * 2048 ** 3 / best / 1e9


def epoch_flops(cfg, ds, windows):
    """The matrix products of one epoch, forward and backward (each product's backward is two of
    the same size), over the valid steps only (padding needs none) and by part: what any
    implementation must compute. Elementwise work (gates, softmax, the memory write) is not counted."""
    _, lengths, targets = windows.cut(np.arange(len(windows)))
    steps, n_targets = int(lengths.sum()), int((targets > 0).sum())
    batches = -(-len(windows) // cfg["train_batch_size"])
    D, H, K, N = cfg["embedding_size"], cfg["hidden_size"], cfg["kg_embedding_size"], ds.n_items
    R = len(ds.relation_tokens) + cfg["pad_slot"]
    # per layer: W_i x_t and W_h h_{t-1} at every valid step, forward and backward, but no gradient
    # towards the start h_0 = 0 (one product of each window's first step)
    gru = sum(6 * steps * 3 * H * ((D if layer == 0 else H) + H) - len(windows) * 2 * 3 * H * H
              for layer in range(cfg["num_layers"]))
    parts = {"GRU": gru, "scores + softmax": 6 * n_targets * N * D}
    if cfg["no_memory"]:
        parts["W_u"] = 6 * steps * H * D
    else:
        # s_t = W_s h_t; the read: s_t . r_a and sum_a w_a v_a, forward and backward towards s_t and w
        # (a frozen KG's memory needs no gradient; a trained one's also towards v_a)
        parts["memory"] = 6 * steps * H * K + (8 if cfg["freeze_kg"] else 10) * steps * R * K
        parts["W_u"] = 6 * steps * (H + K) * D
        parts["scores + softmax"] += batches * 6 * (N + 1) * (D + K) * D  # q_i = W_i [x_i ; e_i], every batch
    return parts


def product_gflops(threads, seconds=0.2):
    """The float32 GFLOP/s of cpu.cpp's register block on `threads` threads, each making the GRU's
    step product (6 x 128 @ 128 x 384) over and over in its own cache: the rate this CPU's
    vector units give the compiled kernels (the second peak). Best of 3 runs of about
    `seconds` each."""
    lib, flops = kernels.cpu._load(), 2 * 6 * 128 * 384

    def run(iters):
        t0 = time.perf_counter()
        lib.ksr_product_loop(iters, threads)
        return time.perf_counter() - t0

    iters = 1000
    while run(iters) < seconds / 4:  # the first call is also the warm-up
        iters *= 4
    return threads * iters * flops / min(run(iters) for _ in range(3)) / 1e9


def epoch_seconds(settings, ds, windows, rounds):
    """{name: median seconds of a train_epoch} for settings {name: (cfg, threads)}, each a fresh model
    (same seed: same weights), measured in turns: every round runs one epoch of each setting, so
    the machine's slow and fast minutes fall on all of them alike. One warm-up round first."""
    runs = {}
    for name, (cfg, threads) in settings.items():
        torch.manual_seed(0)
        model = train.build_model(cfg, ds)
        runs[name] = (model, train.make_optimizer(model, cfg), torch.Generator().manual_seed(0), cfg, threads)
    times = {name: [] for name in settings}
    old = torch.get_num_threads()
    for r in range(rounds + 1):
        for name, (model, opt, gen, cfg, threads) in runs.items():
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            train.train_epoch(model, opt, windows, cfg, "cpu", gen)
            if r:
                times[name].append(time.perf_counter() - t0)
    torch.set_num_threads(old)
    return {name: statistics.median(v) for name, v in times.items()}


def part_seconds(cfg, ds, windows, n_batches):
    """Seconds per epoch of each part of a training step, each timed alone on the same batches
    (median per batch x batches per epoch), and of the whole step."""
    torch.manual_seed(0)
    model, bs = train.build_model(cfg, ds), cfg["train_batch_size"]
    opt = train.make_optimizer(model, cfg)
    order = np.random.default_rng(0).permutation(len(windows))
    per_epoch = -(-len(windows) // bs)
    times = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def backward(y, grad=None):  # a loss on the valid steps only, as the model's own
        (y * valid).sum().backward() if grad is None else y.backward(grad)

    model.train()
    for b in [0] + list(range(min(n_batches, per_epoch))):  # batch 0 twice: the first is a warm-up, dropped
        seq, lengths, targets = timed("batch cutting", lambda: tuple(map(torch.as_tensor, windows.cut(order[b * bs:(b + 1) * bs]))))
        valid = (targets > 0)[..., None].float()
        x = timed("embeddings + dropout", lambda: model.emb_dropout(model.item_embedding(seq)))
        timed("embeddings + dropout", lambda: backward(x, torch.ones_like(x)))
        x = x.detach().requires_grad_()
        h = timed("GRU", lambda: model.gru(x, lengths, all_steps=True))
        timed("GRU", lambda: backward(h))
        h = h.detach().requires_grad_()
        if not model.no_memory:
            m = timed("memory", lambda: model.memory(model.entity_embedding(seq), lengths, model.relations,
                                                     model.read_query(h), model.gamma, True))
            timed("memory", lambda: backward(m))
            h = torch.cat([h, m.detach()], -1).requires_grad_()
        p = timed("W_u", lambda: model.dense_layer_u(h))
        timed("W_u", lambda: backward(p))
        p = p.detach().requires_grad_()
        loss = timed("scores + softmax", lambda: model.loss(p, targets))
        timed("scores + softmax", lambda: loss.backward())
        timed("optimizer", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))

        def step():
            loss = model(seq, lengths, targets, all_steps=True)[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        timed("whole step", step)
    # each part was timed twice a batch (forward, backward) except cutting, the optimizer and the step
    twice = {"embeddings + dropout", "GRU", "memory", "W_u", "scores + softmax"}
    return {k: statistics.median([a + b for a, b in zip(v[2::2], v[3::2])] if k in twice else v[1:]) * per_epoch
            for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--time_epochs", type=int, default=3, help="rounds: epochs timed per setting (median), after a warm-up")
    ap.add_argument("--batches", type=int, default=12, help="batches for the parts")
    ap.add_argument("--batch_sizes", default="16,32,64,128,256", help="train_batch_size values to time")
    args, train_argv = ap.parse_known_args()
    cfg = vars(train.parse_args(train_argv))
    if cfg["train_mode"] != "sequence":
        ap.error("bench.epoch times the default command's sequence-mode epoch (--train_mode sequence)")
    ds = train.load_data(cfg, log=lambda m: None)
    windows = data.sequence_windows(ds.seqs, ds.train, cfg["MAX_ITEM_LIST_LENGTH"], cfg["window_stride"])
    threads, bs = torch.get_num_threads(), cfg["train_batch_size"]
    print(f"{cfg['dataset']} (kg {cfg['kg']}, freeze_kg {cfg['freeze_kg']}): {len(windows)} windows of "
          f"{cfg['MAX_ITEM_LIST_LENGTH']} steps in batches of {bs}, lr {cfg['learning_rate']}; torch {torch.__version__}")

    counts = sorted({threads, 1}, reverse=True)  # all threads, and 1 (the same on a 1-thread machine)
    peak = {n: peak_gflops(n) for n in counts}
    compiled = kernels.cpu.unavailable_reason() is None
    block = {n: max(peak[n], product_gflops(n)) if compiled else peak[n] for n in counts}
    flops = epoch_flops(cfg, ds, windows)
    total = sum(flops.values())
    print(f"\npeak, torch's BLAS (float32 2048^3 matmul): {peak[1]:.0f} GFLOP/s on 1 thread"
          + f", {peak[threads]:.0f} on {threads}" * (threads > 1))
    if compiled:
        print(f"peak, cpu.cpp's register block (in cache): {block[1]:.0f} GFLOP/s on 1 thread"
              + f", {block[threads]:.0f} on {threads}" * (threads > 1))
    print(f"an epoch's matrix products: {total / 1e9:.1f} GFLOP -> floor at torch's BLAS rate "
          + ", ".join(f"{total / 1e9 / peak[n]:.2f} s on {n} thread" + "s" * (n > 1) for n in counts)
          + ("; at the register block's " + ", ".join(f"{total / 1e9 / block[n]:.2f} s" for n in counts)) * compiled)

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    settings = {"ours": (cfg, threads), "reference": (dict(cfg, kernels="reference"), threads),
                "torch": (dict(cfg, kernels="torch"), threads)}
    if threads > 1:
        settings["ours, 1 thread"] = (cfg, 1)
    settings.update({f"batch {b}": (dict(cfg, train_batch_size=b), threads) for b in sizes if b != bs})
    sec = epoch_seconds(settings, ds, windows, args.time_epochs)
    seconds, reference = {n: sec["ours" if n == threads else "ours, 1 thread"] for n in counts}, sec["reference"]
    print(f"\n{'s / epoch (median of ' + str(args.time_epochs) + ')':28}{'seconds':>9}{'GFLOP/s':>9}{'x floor':>9}"
          + f"{'x block floor':>15}" * compiled)
    for n in counts:
        print(f"{f'{n} thread' + 's' * (n > 1):28}{seconds[n]:>9.2f}{total / 1e9 / seconds[n]:>9.0f}"
              f"{seconds[n] * peak[n] / (total / 1e9):>9.2f}" + f"{seconds[n] * block[n] / (total / 1e9):>15.2f}" * compiled)
    print(f"{threads} threads buy {seconds[1] / seconds[threads]:.2f}x over 1; " * (threads > 1)
          + f"--kernels reference (ksr.py alone): {reference:.2f} s, {reference / seconds[threads]:.2f}x ours; "
          f"--kernels torch: {sec['torch']:.2f} s, {sec['torch'] / seconds[threads]:.2f}x ours")
    print(kernels.describe(train.build_model(cfg, ds).kernels))

    parts = part_seconds(cfg, ds, windows, args.batches)
    whole = parts.pop("whole step")
    print(f"\nparts of a step, each timed alone ({args.batches} batches; s / epoch, share of the whole step, GFLOP/s):")
    for k, v in parts.items():
        rate = f"{flops[k] / 1e9 / v:>9.0f}" if k in flops else f"{'':>9}"
        print(f"  {k:26}{v:>7.3f}{v / whole:>8.0%}{rate}")
    print(f"  {'autograd and glue':26}{whole - sum(parts.values()):>7.3f}{1 - sum(parts.values()) / whole:>8.0%}")
    print(f"  {'whole step':26}{whole:>7.3f}{1:>8.0%}{total / 1e9 / whole:>9.0f}")

    print(f"\ntrain_batch_size ({threads} threads; the epoch's work is the same, the products' shapes change):")
    print(f"  {'batch':>6}{'steps':>7}{'s / epoch':>11}{'GFLOP/s':>9}{'x floor':>9}")
    for b in sizes:
        s = sec["ours" if b == bs else f"batch {b}"]
        work = sum(epoch_flops(dict(cfg, train_batch_size=b), ds, windows).values()) / 1e9
        print(f"  {b:>6}{-(-len(windows) // b):>7}{s:>11.2f}{work / s:>9.0f}{s * peak[threads] / work:>9.2f}"
              + ("  (the default)" if b == bs else ""))


if __name__ == "__main__":
    main()
