"""The compiled CPU kernels refuse what they cannot compute and never hide a NaN: every public
function of kernels/cpu.py checks its tensors (the C++ loops read raw pointers) and raises one
ValueError naming the argument; NaN and inf come out where torch's reference puts them; a second
backward gives the same gradient again, or one clear error; the compiled library is this user's, compiler's and CPU's."""
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kernels
import ksr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(bool(kernels.cpu.unavailable_reason()), reason=str(kernels.cpu.unavailable_reason()))
cpu = kernels.cpu
NAN, INF = float("nan"), float("inf")


def good_args(B=3, L=5, K=4, R=2, D=6, H=7, n=4, N=9):
    """Arguments each public function computes with."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    lengths = torch.tensor([5, 1, 3])
    return {
        cpu.cpu_gru_layer: dict(x=r(B, L, D), w_ih=r(3 * H, D), w_hh=r(3 * H, H), lengths=lengths),
        cpu.cpu_memory_write: dict(kg_seq=r(B, L, K), lengths=lengths, relations=r(R, K)),
        cpu.cpu_kv_memory: dict(kg_seq=r(B, L, K), lengths=lengths, relations=r(R, K), query=r(B, K), gamma=2.0),
        cpu.cpu_cross_entropy: dict(p=r(n, D), q=r(N + 1, D), targets=torch.tensor([1, 9, 4, 4])),
    }


def test_the_good_arguments_compute():
    for fn, args in good_args().items():
        assert torch.isfinite(fn(**args)).all(), fn.__name__


@given(fn=st.sampled_from(list(good_args())), arg=st.integers(0, 5), how=st.sampled_from(
    ["dtype", "double", "int", "size", "dims", "device", "not a tensor"]), extra=st.integers(1, 3))
@settings(max_examples=150, deadline=None)
def test_a_mismatched_argument_is_one_value_error(fn, arg, how, extra):
    """Each tensor argument, changed in one way (another dtype, a size that does not fit the others,
    another rank, another device, not a tensor): a ValueError, never a number. Where the argument alone
    is wrong (not one size against another), the error names it."""
    args = good_args()[fn]
    names = [k for k, v in args.items() if torch.is_tensor(v)]
    name = names[arg % len(names)]
    t = args[name]
    floating = t.is_floating_point()
    if how == "dtype":
        t = t.half() if floating else t.float()
    elif how == "double":  # float64 beside float32: one dtype for every argument
        if not floating:
            return
        t = t.double()
    elif how == "int":
        t = t.long() if floating else t.bool()
    elif how == "size":  # the last dimension (a vector's length): every one is tied to another argument's
        t = torch.cat([t] + [t[..., :1]] * extra, dim=-1)
    elif how == "dims":
        t = t.unsqueeze(0) if extra % 2 else t.reshape(-1)[:1].squeeze(0)
    elif how == "device":
        t = t.to("meta")  # another device (no GPU needed): its pointer must never reach C++
    else:
        t = t.tolist()
    with pytest.raises(ValueError, match=name if how in ("dtype", "int", "dims", "device", "not a tensor") else "cpu_"):
        fn(**dict(args, **{name: t}))


def test_dropout_mask_refuses_what_it_cannot_draw():
    for p, dtype in ((1.0, torch.float32), (-0.1, torch.float32), (0.5, torch.int64), (0.5, torch.float16)):
        with pytest.raises(ValueError, match="dropout_mask: p must be in"):
            cpu.dropout_mask((3, 4), p, dtype)


def same_nonfinite(got, want, nan_in):
    """A NaN that went in comes out where the reference's does, and everything else equals it. An inf
    that went in comes out non-finite where the reference has a non-finite value, and where the reference
    is finite ours is the same number; but
    ours may keep an inf in the elements it reaches where torch's 0 * inf spreads a NaN to all (the
    kernels' exp saturates, to stay branch-free, and the write's update is v + z (E - v)). Either way
    a non-finite value reaches the loss, and the run stops (train.NonFiniteError)."""
    ok = torch.isfinite(want)
    if nan_in:
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(torch.isfinite(got), ok), (got, want)
    else:  # a gate that saturates makes an inf finite, in both
        assert bool(torch.isfinite(got).all()) == bool(ok.all()) and torch.isfinite(got[ok]).all(), (got, want)
    torch.testing.assert_close(got[ok], want[ok], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("where", ["x", "w_hh"])
def test_nan_and_inf_in_the_gru_come_out_as_torchs(value, where):
    torch.manual_seed(1)
    gru = torch.nn.GRU(4, 5, 1, bias=False, batch_first=True).double()
    x, lengths = torch.randn(3, 6, 4, dtype=torch.float64), torch.tensor([6, 2, 4])
    w_hh = gru.weight_hh_l0.detach().clone()
    if where == "x":
        x[0, 2, 1] = value
    else:
        w_hh[3, 2] = value
    with torch.no_grad():
        gru.weight_hh_l0.copy_(w_hh)
        want = torch.where((torch.arange(6) < lengths[:, None])[..., None], gru(x)[0], 0.0)  # 0 at padding, as the kernel
    same_nonfinite(cpu.cpu_gru_layer(x, gru.weight_ih_l0.detach(), w_hh, lengths).detach(), want, value != value)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("where", ["kg_seq", "relations", "query"])
@pytest.mark.parametrize("all_steps", [False, True])
def test_nan_and_inf_in_the_memory_come_out_as_torchs(value, where, all_steps):
    g = torch.Generator().manual_seed(2)
    args = dict(kg_seq=torch.randn(3, 5, 4, generator=g, dtype=torch.float64), lengths=torch.tensor([5, 2, 4]),
                relations=torch.randn(3, 4, generator=g, dtype=torch.float64),
                query=torch.randn(*((3, 5, 4) if all_steps else (3, 4)), generator=g, dtype=torch.float64))
    args[where].view(-1)[5] = value
    want = ksr.kv_memory(**args, gamma=2.0, all_steps=all_steps)
    same_nonfinite(cpu.cpu_kv_memory(**args, gamma=2.0, all_steps=all_steps), want, value != value)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("where", ["p", "q"])
def test_nan_and_inf_in_the_ce_come_out_as_torchs(value, where):
    g = torch.Generator().manual_seed(3)
    args = dict(p=torch.randn(70, 6, generator=g, dtype=torch.float64),
                q=torch.randn(30, 6, generator=g, dtype=torch.float64), targets=torch.randint(1, 30, (70,), generator=g))
    args[where][4, 2] = value
    pr, qr = args["p"].clone().requires_grad_(), args["q"].clone().requires_grad_()
    pc, qc = args["p"].clone().requires_grad_(), args["q"].clone().requires_grad_()
    want, got = ksr.cross_entropy(pr, qr, args["targets"]), cpu.cpu_cross_entropy(pc, qc, args["targets"])
    same_nonfinite(got.detach(), want.detach(), value != value)
    (want + got).backward()
    assert pc.grad.isnan().any() == pr.grad.isnan().any() and qc.grad.isnan().any() == qr.grad.isnan().any()


def test_no_nan_reaches_an_integer_cast():
    """Casting a NaN to an integer is undefined behaviour (one compiler's NaN may come out a number): exp_
    makes 2^n from n's bits (n + 1.5 * 2^52), and no float is cast to an integer anywhere in cpu.cpp
    (the NaN tests above pin what comes out)."""
    with open(cpu.SOURCE, encoding="utf-8") as f:
        code = "\n".join(line.split("//")[0] for line in f)
    assert "6755399441055744.0" in code and "12582912.0f" in code
    floats = set(re.findall(r"\b(?:double|float|T) (\w+) =", code))  # every float variable's name
    casts = re.findall(r"\b(?:u?int(?:32|64)_t|int|long|size_t)\((\w+)\)", code)
    assert casts and not floats & set(casts), sorted(floats & set(casts))


def test_a_second_backward_gives_the_same_gradients_or_one_clear_error():
    """backward(retain_graph=True), then backward again: the GRU's and the memory's gradients twice; the
    CE, whose gradient is made in the forward and handed out (scaled in place) by the first backward,
    says so in one line instead of an AttributeError."""
    g = torch.Generator().manual_seed(4)
    gru = torch.nn.GRU(4, 5, 1, bias=False, batch_first=True).double()
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    kg, rel = torch.randn(3, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 4])
    loss = cpu.cpu_gru_layer(x, gru.weight_ih_l0, gru.weight_hh_l0, lengths).sum() + cpu.cpu_kv_memory(
        kg, lengths, rel, s, 2.0).sum()
    leaves = [x, s, gru.weight_hh_l0]
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    for a, b in zip(first, torch.autograd.grad(loss, leaves)):
        assert torch.equal(a, b)
    p = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(12, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ce = cpu.cpu_cross_entropy(p, q, torch.randint(1, 12, (8,), generator=g))
    ce.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cpu_cross_entropy: a second backward through one loss"):
        ce.backward()


def test_the_library_is_this_users_and_this_compilers(tmp_path):
    """The cache key holds the compiler's identity and the CPU's features; with $KSR_CACHE_DIR unset the
    cache is the user's ($XDG_CACHE_HOME/ksr); the library is readable by other users of a shared cache; a
    compiler without OpenMP is said once (a one-thread build); a cached library that cannot be loaded (a
    foreign user's, or damaged) is replaced by one of this user's, saying why."""
    real = shutil.which("c++") or shutil.which("g++")
    fake = tmp_path / "c++"  # the machine's compiler, under another version line and without OpenMP
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "fake-c++ 9.9"; exit 0; }}\n'
                    f'for a in "$@"; do [ "$a" = -fopenmp ] && {{ echo "no OpenMP here" >&2; exit 1; }}; done\nexec {real} "$@"\n')
    fake.chmod(0o755)
    assert cpu._library_path(real) != cpu._library_path(str(fake))  # another compiler: another library
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n")
    other = tmp_path / "cpuinfo2"
    other.write_text("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n")
    assert cpu._cpu_id(str(arm)) != cpu._cpu_id(str(other))  # another ARM CPU: another library
    env = {k: v for k, v in os.environ.items() if k != "KSR_CACHE_DIR"}
    env.update(CXX=str(fake), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    code = ("from kernels import cpu; print(cpu.unavailable_reason()); "
            "import torch; print(float(cpu.cpu_cross_entropy(torch.ones(2, 3), torch.ones(4, 3), torch.tensor([1, 3]))))")
    run = lambda: subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    works = lambda out: out.returncode == 0 and out.stdout.splitlines()[-2] == "None" and \
        abs(float(out.stdout.splitlines()[-1]) - math.log(3)) < 1e-6  # the CE of equal scores over 3 items
    out = run()
    lines = out.stdout.splitlines()
    assert works(out), out.stdout + out.stderr
    assert any("cannot build with OpenMP (no OpenMP here): the compiled kernels run on one thread" in ln for ln in lines)
    [lib] = (tmp_path / "xdg" / "ksr").iterdir()
    assert lib.stat().st_mode & 0o044 == 0o044  # readable by the group and others (umask permitting: 022 here)
    lib.write_bytes(b"not a library")  # another user's library we cannot load, or a damaged one
    out = run()
    assert works(out), out.stdout + out.stderr
    assert f"cannot load {lib}" in out.stdout and "compiling one of this user's" in out.stdout
    assert len(list((tmp_path / "xdg" / "ksr").iterdir())) == 2
