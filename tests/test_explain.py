"""explain.py: the per-relation score terms add up to the model's score, end to end."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ksr import KSR
from options import DEFAULTS
import train
from extras import checkpoint, explain
from test_train import tiny_cfg


@given(st.integers(1, 4), st.integers(1, 7), st.integers(1, 5), st.integers(1, 3), st.integers(1, 2),
       st.booleans(), st.integers(0, 2 ** 31))
@settings(max_examples=60)
def test_relation_terms_sum_to_the_score(B, L, R, E, num_layers, pad_slot, seed):
    g = torch.Generator().manual_seed(seed)
    N, K, H = 9, 4, 5
    options = {**{k: DEFAULTS[k] for k in train.MODEL_OPTIONS}, "embedding_size": E, "hidden_size": H,
               "num_layers": num_layers, "pad_slot": pad_slot}
    model = KSR(N, torch.randn(N + 1, K, generator=g), torch.randn(R, K, generator=g), **options).eval()
    for p in model.parameters():  # beyond the initialisation: biases too
        p.data.normal_(0, 1, generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    seq = torch.randint(1, N + 1, (B, L), generator=g) * (torch.arange(L)[None] < lengths[:, None])
    p_seq, p_rel, w, w_steps = explain.decompose(model, seq, lengths)
    assert p_rel.shape == (B, R + pad_slot, E)
    q = model.item_representations().detach()
    with torch.no_grad():
        scores = model.full_scores(model(seq, lengths)[0])[:, 1:]
    terms = p_seq @ q[1:].T + (p_rel @ q[1:].T).sum(1)  # sequence term + one term per relation
    torch.testing.assert_close(terms, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(1), torch.ones(B))
    valid = torch.arange(L)[None] < lengths[:, None]
    torch.testing.assert_close(w_steps.sum(-1), valid.float())  # rows sum to 1, padding steps are 0
    torch.testing.assert_close(w_steps[torch.arange(B), lengths - 1], w)


@pytest.fixture
def tiny_run(tiny_dataset, tmp_path):
    out = str(tmp_path / "run")
    train.run(tiny_cfg(tiny_dataset, out, epochs=1, train_mode="sequence", pad_slot=True), log=lambda m: None)
    return out


def test_explain_user_end_to_end(tiny_run, tiny_dataset, capsys):
    assert train.main(["explain", "--run", tiny_run, "--user", "u3", "--topk", "4"]) == 0
    out = capsys.readouterr().out
    assert "held-out next item: Movie" in out and "read attention over relations" in out
    assert out.count(" = ") >= 4 and "r0" in out and "[PAD] (zero key)" in out
    cfg, ds, model, _ = checkpoint.load_checkpoint(os.path.join(tiny_run, "model.pt"), {}, log=lambda m: None)
    ex = explain.explain_user(model, ds, ds.user_tokens.index("u3"), 4)
    assert abs(sum(ex["attention"]) - 1) < 1e-6
    for s, st_, terms in zip(ex["scores"], ex["sequence_term"], ex["relation_terms"]):
        assert abs(st_ + sum(terms) - s) < 1e-5
    assert ex["scores"] == sorted(ex["scores"], reverse=True)


def test_explain_summary_and_errors(tiny_run, tmp_path, capsys):
    assert explain.main(["--run", tiny_run, "--summary"]) == 0  # python explain.py, the same program
    rows = [l for l in capsys.readouterr().out.splitlines() if l.strip().endswith(("r0", "r1", "r2", "(zero key)"))]
    assert len(rows) == 4
    assert abs(sum(float(r.split()[0]) for r in rows) - 1) < 4e-3  # mean attention sums to 1 (3 decimals each)
    assert train.main(["explain", "--run", tiny_run, "--user", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "no such user" in err and "u1" in err and err.strip().count("\n") == 0
    assert train.main(["explain", "--run", str(tmp_path / "nothing"), "--summary"]) == 2
    assert train.main(["explain", "--run", tiny_run]) == 2  # --user or --summary


def test_explain_plot_writes_png(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    for args, name in [(["--user", "u2"], "user.png"), (["--summary"], "summary.png")]:
        path = tmp_path / name
        assert train.main(["explain", "--run", tiny_run, *args, "--plot", str(path)]) == 0
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp-")]


def test_checkpoint_from_before_newer_options(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "old")
    train.run(tiny_cfg(tiny_dataset, out, epochs=1, train_mode="prefix"), log=lambda m: None)
    path = os.path.join(out, "model.pt")
    ckpt = torch.load(path, weights_only=False)
    for key in ("train_mode", "pad_slot", "window_stride"):  # options added after early runs
        del ckpt["config"][key]
    torch.save(ckpt, path)
    cfg, _, model, _ = checkpoint.load_checkpoint(path, {}, log=lambda m: None)
    assert cfg["train_mode"] == "prefix" and cfg["pad_slot"] is False
    assert train.main(["explain", "--run", out, "--summary"]) == 0
    assert "train_mode prefix" in capsys.readouterr().out
