"""bench.py's floor: the products it counts for an epoch are the ones torch runs."""
import types

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import epoch as bench
import kernels
import ksr
from options import DEFAULTS


class FullWindows:
    """Windows with no padding and a target at every step: what bench.epoch_flops reads."""

    def __init__(self, n, L, n_items, seed=0):
        g = np.random.default_rng(seed)
        self.seq = g.integers(1, n_items + 1, (n, L))
        self.targets = g.integers(1, n_items + 1, (n, L))

    def __len__(self):
        return len(self.seq)

    def cut(self, idx):
        return self.seq[idx], np.full(len(idx), self.seq.shape[1]), self.targets[idx]


@pytest.mark.parametrize("no_memory,freeze_kg,num_layers", [(False, True, 1), (False, False, 2), (True, True, 1)])
def test_epoch_flops_are_the_products_torch_runs(no_memory, freeze_kg, num_layers):
    """epoch_flops == torch's own count (FlopCounterMode) of the reference model's forward and
    backward over one epoch, but for the padding item's column of the scores, which the
    reference computes and the count leaves out (the fast CE does not compute it), and for the
    read's sum_a w_a v_a, which epoch_flops counts and torch does not (ksr.memory_read makes it
    a product and a sum, not a matmul): 2 R K a step forward, as much backward towards w and,
    for a trained KG, towards v."""
    n_items, R, L, n, bs = 11, 3, 5, 7, 3
    cfg = dict(DEFAULTS, learning_rate=0.001, embedding_size=6, hidden_size=5, kg_embedding_size=4,
               num_layers=num_layers, no_memory=no_memory, freeze_kg=freeze_kg, train_batch_size=bs, dropout_prob=0.0)
    ds = types.SimpleNamespace(n_items=n_items, relation_tokens=["r"] * R)
    windows = FullWindows(n, L, n_items)
    torch.manual_seed(0)
    model = ksr.KSR(n_items, torch.randn(n_items + 1, 4), torch.randn(R, 4), **{k: cfg[k] for k in (
        "embedding_size", "hidden_size", "num_layers", "dropout_prob", "gamma", "loss_type", "freeze_kg", "no_memory",
        "pad_slot")})
    with FlopCounterMode(display=False) as counter:
        for i in range(0, n, bs):
            seq, lengths, targets = map(torch.as_tensor, windows.cut(np.arange(i, min(i + bs, n))))
            model(seq, lengths, targets, all_steps=True)[1].backward()
    padding_column = 6 * n * L * cfg["embedding_size"]
    weighted_sum = 0 if no_memory else (4 if freeze_kg else 6) * n * L * R * cfg["kg_embedding_size"]
    assert sum(bench.epoch_flops(cfg, ds, windows).values()) + padding_column - weighted_sum == counter.get_total_flops()


def test_bench_runs_and_reports_the_floor(tiny_dataset, capsys, monkeypatch):
    """bench.py end to end on the tiny dataset: both peaks, both floors, both thread counts, the parts, each batch size."""
    monkeypatch.setattr("sys.argv", ["bench.py", "--dataset", "tiny", "--data_path", tiny_dataset, "--kg", "files",
                                     "--kg_embedding_size", "8", "--time_epochs", "1", "--batches", "2",
                                     "--batch_sizes", "4,7"])
    bench.main()
    out = capsys.readouterr().out
    lines = ["peak, torch's BLAS (float32 2048^3 matmul)", "floor at torch's BLAS rate", "1 thread", "threads buy",
             "scores + softmax", "whole step"]
    if kernels.cpu.unavailable_reason() is None:
        lines += ["peak, cpu.cpp's register block", "at the register block's", "x block floor"]
    for line in lines:
        assert line in out, line
    sizes = [ln.split()[0] for ln in out.splitlines()[-2:]]
    assert sizes == ["4", "7"]
