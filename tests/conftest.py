import os
import sys

# The kernel tests run Triton's interpreter on the CPU; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import pytest
from hypothesis import settings

# Shared, noisy machines: no per-example deadline (a slow example is not a wrong one).
settings.register_profile("ksr", deadline=None)
settings.load_profile("ksr")


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


@pytest.fixture
def tiny_dataset(tmp_path):
    write_tiny_dataset(str(tmp_path))
    return str(tmp_path)
