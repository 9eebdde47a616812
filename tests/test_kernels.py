"""The fused Triton kernel against the plain-torch reference (ksr.kv_memory) in float64.

Runs under TRITON_INTERPRET=1 on the CPU (conftest.py sets it before triton is imported);
skips where triton is missing. With TRITON_INTERPRET=0 on a CUDA machine the kernel-level tests
run the compiled kernel on the GPU (bench/gpu_check.py does that); references stay on the CPU.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import ksr
from conftest import random_batch, small_model

triton = pytest.importorskip("triton")
import kernels  # noqa: E402

kv_module = importlib.import_module("kernels.kv_memory")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"

# Tolerances: float32 kernel vs float64 reference, inputs of norm ~1.
#   out:   each step is a convex update of O(1) values; error grows ~linearly with L (<= 12 here).
#   grads: the backward walks the recurrence in reverse and multiplies through L gates and a
#          softmax scaled by gamma <= 20, so it loses a few more bits than the forward.
#   saturated: gamma = 50..200 makes the softmax one-hot; its gradient w (1 - w) is then a
#          difference of numbers near 1 and float32 keeps only ~1e-7 of each, amplified by
#          gamma: absolute tolerance scales with gamma (gamma * 1e-5).
TOL = {
    "out": dict(rtol=1e-4, atol=1e-5),
    "grad": dict(rtol=1e-3, atol=1e-4),
}


@pytest.fixture(autouse=True, scope="module")
def poison():
    """NaN-fill every buffer the kernel allocates, so an element it never writes fails."""
    kv_module.POISON_OUTPUTS = True
    yield
    kv_module.POISON_OUTPUTS = False


@st.composite
def cases(draw, per_step=None, gamma=st.floats(0, 20)):
    B, L = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    R, K = draw(st.integers(1, 30)), draw(st.integers(1, 70))
    kind = draw(st.sampled_from(["random", "all_1", "all_L"]))
    if kind == "random":
        lengths = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
    else:
        lengths = [1 if kind == "all_1" else L] * B
    three_d = draw(st.booleans()) if per_step is None else per_step
    seed = draw(st.integers(0, 2 ** 31))
    need_dx = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    # rows of norm about 1, the size trained TransE vectors and queries have
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1) \
        * (0.8 + 0.4 * torch.rand(*s[:-1], 1, generator=g, dtype=torch.float64))
    return dict(kg_seq=unit(B, L, K), lengths=torch.tensor(lengths), relations=unit(R, K),
                query=unit(B, L, K) if three_d else unit(B, K), gamma=draw(gamma), need_dx=need_dx, seed=seed)


def check(case, out_tol=TOL["out"], grad_tol=TOL["grad"]):
    x64, q64, r64 = case["kg_seq"], case["query"], case["relations"]
    lengths, gamma, need_dx = case["lengths"], case["gamma"], case["need_dx"]
    # the kernel, float32
    x = x64.float().to(DEVICE).requires_grad_(need_dx)
    q = q64.float().to(DEVICE).requires_grad_()
    out = kernels.kv_memory.fused_kv_memory(x, lengths.to(DEVICE), r64.float().to(DEVICE), q, gamma, q.dim() == 3)
    # the reference, float64
    xr = x64.clone().requires_grad_(need_dx)
    qr = q64.clone().requires_grad_()
    ref = ksr.kv_memory(xr, lengths, r64, qr, gamma, qr.dim() == 3)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(case["seed"]), dtype=torch.float64)
    inputs, ref_inputs = [q] + ([x] if need_dx else []), [qr] + ([xr] if need_dx else [])
    grads = [g.cpu() for g in torch.autograd.grad((out * dout.float().to(DEVICE)).sum(), inputs)]
    out = out.cpu()
    ref_grads = torch.autograd.grad((ref * dout).sum(), ref_inputs)
    print("max |out - ref|", float((out.detach().double() - ref.detach()).abs().max()),
          "max |grad - ref|", [float((a.double() - b).abs().max()) for a, b in zip(grads, ref_grads)])
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, **out_tol)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, **grad_tol)


@given(cases(per_step=False))
@settings(max_examples=110, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_final_read_matches_reference(case):
    check(case)


@given(cases(per_step=True))
@settings(max_examples=110, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_per_step_read_matches_reference(case):
    check(case)


@given(cases(gamma=st.floats(50, 200)))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_saturated_softmax(case):
    """gamma >> 1: w is one-hot up to float32 rounding; see TOL for why the gradient
    tolerance grows with gamma."""
    g = case["gamma"]
    check(case, grad_tol=dict(rtol=1e-3, atol=g * 1e-5))


def test_padding_steps_are_zero_and_written():
    B, L, R, K = 3, 6, 5, 7
    x = torch.randn(B, L, K, device=DEVICE)
    lengths = torch.tensor([1, 6, 3], device=DEVICE)
    q = torch.randn(B, L, K, device=DEVICE, requires_grad=True)
    xg = x.clone().requires_grad_()
    out = kernels.kv_memory.fused_kv_memory(xg, lengths, torch.randn(R, K, device=DEVICE), q, 2.0, all_steps=True)
    mask = torch.arange(L, device=DEVICE)[None, :] >= lengths[:, None]
    assert torch.all(out[mask] == 0) and torch.isfinite(out).all()
    dq, dx = torch.autograd.grad(out.sum(), [q, xg])
    assert torch.all(dq[mask] == 0) and torch.all(dx[mask] == 0) and torch.isfinite(dx).all()


@pytest.mark.parametrize("bad, match", [
    (dict(kg_seq=torch.randn(2, 3)), "kg_seq must be"),
    (dict(relations=torch.randn(4, 5)), "relations must be"),
    (dict(query=torch.randn(2, 4)), "query must be"),
    (dict(query=torch.randn(2, 3, 6)), "all_steps=False query must be"),
    (dict(lengths=torch.tensor([1, 4])), "lengths must be in 1..3"),
    (dict(lengths=torch.tensor([0, 1])), "lengths must be in 1..3"),
    (dict(lengths=torch.tensor([1.0, 2.0])), "integer tensor"),
    (dict(kg_seq=torch.randn(2, 3, 6, dtype=torch.float64)), "float32"),
    (dict(relations=torch.randn(4, 6, requires_grad=True)), "relations are a constant"),
    (dict(relations=torch.randn(1500, 6)), "pads to a 2048 x 8 block, past the fused kernel's limit of 8192"),
])
def test_bad_input_is_rejected(bad, match):
    args = dict(kg_seq=torch.randn(2, 3, 6), lengths=torch.tensor([1, 3]), relations=torch.randn(4, 6),
                query=torch.randn(2, 6))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.kv_memory.fused_kv_memory(args["kg_seq"], args["lengths"], args["relations"], args["query"], 1.0)


def test_import_never_fails_without_triton():
    code = ("import sys; sys.modules['triton'] = None; import kernels; "
            "print(kernels.kv_memory.unavailable_reason()); import ksr")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert out.returncode == 0, out.stderr
    assert "triton is not installed" in out.stdout


@pytest.mark.parametrize("all_steps", [False, True])
@pytest.mark.parametrize("freeze_kg", [True, False])
def test_model_with_fused_memory_matches_sorted(freeze_kg, all_steps):
    """KSR with the fused memory against the default, sorted_kv_memory: loss and every gradient."""
    seq, lengths, targets = random_batch()
    if all_steps:
        targets = torch.where(seq > 0, torch.randint(1, 14, seq.shape, generator=torch.Generator().manual_seed(2)), 0)
    seq, lengths, targets = seq.to(DEVICE), lengths.to(DEVICE), targets.to(DEVICE)
    losses, grads = [], []
    for memory in (kernels.fast_torch.sorted_kv_memory, kernels.kv_memory.fused_kv_memory):
        model = small_model(freeze_kg=freeze_kg, memory=memory).float().to(DEVICE)
        loss = model(seq, lengths, targets, all_steps=all_steps)[1]
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_mode", ["prefix", "sequence"])
@pytest.mark.parametrize("freeze_kg", [True, False])
def test_train_with_fused_memory_first_batch_loss(tiny_dataset, tmp_path, train_mode, freeze_kg):
    """train.py end to end with --kernels triton (interpreter): first-batch loss == --kernels torch's."""
    import train
    from test_train import tiny_cfg
    losses = {}
    for impl in ("torch", "triton"):
        cfg = tiny_cfg(tiny_dataset, str(tmp_path / impl), epochs=1, max_steps=1, kernels=impl,
                       train_mode=train_mode, freeze_kg=freeze_kg, device=DEVICE, dropout_prob=0.0)
        losses[impl] = train.run(cfg, log=lambda m: None)["train_loss"][0]
    assert abs(losses["torch"] - losses["triton"]) < 1e-4
