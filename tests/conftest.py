import os
import sys

# The kernel tests run Triton's interpreter on the CPU; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pytest
import torch
from hypothesis import settings, strategies as st

import data
import ksr
import options
from extras import line_reader

# Shared, noisy machines: no per-example deadline (a slow example is not a wrong one).
settings.register_profile("ksr", deadline=None)
settings.load_profile("ksr")

TRANSE = options.transe_settings(options.DEFAULTS)  # what data.load_dataset trains KG vectors with


def read_line_by_line(path):
    """The reader tests' reference: the header, then extras/line_reader.py (token columns encoded as
    data.read_atomic encodes them). Returns (column names, {column: values})."""
    names, types = data._read_header(path, ())
    cols = line_reader.read_lines(path, names, types)
    cols.update({n: data.Tokens.encode(cols[n]) for n, t in zip(names, types) if t == "token"})
    return names, cols


def write_tiny_dataset(root, name="tiny", n_users=12, n_items=15, n_inter=(4, 9), n_relations=3,
                       linked=None, seed=0, titles=True):
    """A small RecBole knowledge-aware dataset in <root>/<name>/ with planted structure.

    Item i is linked to entity "e<i>"; relation a maps item i to the attribute entity
    "a<a>_<i % (a + 2)>" so each relation groups items differently.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lo, hi = n_inter
    rows = []
    t = 1_000_000
    for u in range(1, n_users + 1):
        for _ in range(int(rng.integers(lo, hi + 1))):
            t += int(rng.integers(1, 100))
            rows.append(f"u{u}\t{int(rng.integers(1, n_items + 1))}\t4\t{t}")
    rng.shuffle(rows)  # file order is not time order
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    linked = range(1, n_items + 1) if linked is None else linked
    with open(os.path.join(folder, f"{name}.link"), "w") as f:
        f.write("item_id:token\tentity_id:token\n" + "".join(f"{i}\te{i}\n" for i in linked))
    with open(os.path.join(folder, f"{name}.kg"), "w") as f:
        f.write("head_id:token\trelation_id:token\ttail_id:token\n")
        for i in range(1, n_items + 1):
            for a in range(n_relations):
                f.write(f"e{i}\tr{a}\ta{a}_{i % (a + 2)}\n")
    if titles:
        with open(os.path.join(folder, f"{name}.item"), "w") as f:
            f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
            for i in range(1, n_items + 1):
                f.write(f"{i}\tMovie {i}\t{1990 + i % 7}\t{['Drama', 'Comedy', 'Action'][i % 3]}\n")
    return folder


def prepared_tiny_dataset(tmp_path_factory, argv):
    """A tiny dataset in a fresh folder with its KG vectors already trained (TransE once, for a
    module's runs, before processes that would each train it start)."""
    import train
    root = str(tmp_path_factory.mktemp("tiny"))
    write_tiny_dataset(root)
    train.load_data(vars(train.parse_args(argv + ["--data_path", root])), log=lambda m: None)
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    write_tiny_dataset(str(tmp_path))
    return str(tmp_path)


@pytest.fixture(scope="module")
def float64():
    """Reference checks in float64, for the modules that ask for it."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@st.composite
def memory_inputs(draw, max_len=7, all_steps=None):
    """Random memory inputs (item_kg, lengths, relations, query, gamma, all_steps); all_steps
    None draws the query shape (a read after every step or only the last), True/False fixes it."""
    B, L = draw(st.integers(1, 4)), draw(st.integers(1, max_len))
    R, K = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2 ** 31))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(draw(st.lists(st.integers(1, L), min_size=B, max_size=B)))
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)
    item_kg, relations = unit(B, L, K), unit(R, K)
    all_steps = draw(st.booleans()) if all_steps is None else all_steps
    query = unit(B, L, K) if all_steps else unit(B, K)
    gamma = draw(st.floats(0, 20))
    return item_kg, lengths, relations, query, gamma, all_steps


def small_model(no_memory=False, freeze_kg=True, loss_type="CE", seed=0, n_items=13, R=4, K=6, num_layers=1,
                memory=ksr.kv_memory, ce=ksr.cross_entropy, gru_layer=None):
    """A small KSR in float64; by default the reference (ksr.py alone), or with another `memory`, `ce`,
    `gru_layer`."""
    torch.manual_seed(seed)
    item_kg = torch.nn.functional.normalize(torch.randn(n_items + 1, K), dim=-1)
    item_kg[0] = 0
    rel = torch.nn.functional.normalize(torch.randn(R, K), dim=-1)
    return ksr.KSR(n_items, item_kg, rel, embedding_size=8, hidden_size=10, num_layers=num_layers, dropout_prob=0.0,
                   gamma=10.0, loss_type=loss_type, freeze_kg=freeze_kg, no_memory=no_memory, pad_slot=False,
                   memory=memory, ce=ce, gru_layer=gru_layer).double()


def random_batch(n_items=13, B=6, L=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    seq = torch.randint(1, n_items + 1, (B, L), generator=g)
    seq[torch.arange(L)[None, :] >= lengths[:, None]] = 0
    return seq, lengths, torch.randint(1, n_items + 1, (B,), generator=g)


def assert_cross_entropy_matches_reference(ce, p, q, targets, c):
    """ce(p, q, targets) == ksr.cross_entropy: the loss, and d p, d q under the upstream gradient
    c (row 0 of q, the padding item, gets 0). float64 inputs."""
    pa, qa, pb, qb = (t.clone().requires_grad_() for t in (p, q, p, q))
    got = ce(pa, qa, targets)
    ga = torch.autograd.grad(got * c, [pa, qa])
    want = ksr.cross_entropy(pb, qb, targets)
    gb = torch.autograd.grad(want * c, [pb, qb])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (ga[1][0] == 0).all()
    return want.detach()
