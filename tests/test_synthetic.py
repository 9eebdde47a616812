"""synthetic.py: a generated dataset loads, has exactly the counts asked for, and carries the
planted structure (and none in the noise relations)."""
import os

import numpy as np
import pytest

import data
from extras import synthetic
from conftest import TRANSE

NAME = "syn-tiny"
KINDS = ("inter", "item", "kg", "link")
quiet = lambda msg: None


def files(root, name=NAME):
    return {k: os.path.join(root, name, f"{name}.{k}") for k in KINDS}


def file_bytes(root, name=NAME):
    out = {}
    for k, p in files(root, name).items():
        with open(p, "rb") as f:
            out[k] = f.read()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset, seed 0, generated once for the module."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    return root, synthetic.generate(NAME, root, "tiny", seed=0, log=quiet)


def test_files_parse_with_the_exact_counts(tiny):
    root, summary = tiny
    preset = synthetic.PRESETS["tiny"]
    cols = {k: data.read_atomic(p) for k, p in files(root).items()}
    for k, p in files(root).items():
        with open(p, encoding="utf-8") as f:
            assert f.readline() == "\t".join(synthetic.HEADERS[k]) + "\n"
    inter = cols["inter"]
    users = np.array(inter["user_id"], dtype=np.int64)
    items = np.array(inter["item_id"], dtype=np.int64)
    times = np.array(inter["timestamp"])
    assert len(users) == preset["interactions"] == summary["interactions"]
    assert len(cols["kg"]["head_id"]) == preset["triples"] == summary["triples"]
    assert sum(summary["triples_by_relation"].values()) == preset["triples"]
    # users 1..N, each with at least MIN_LENGTH interactions, grouped, in time order, no repeated item
    assert set(users.tolist()) == set(range(1, preset["users"] + 1))
    assert np.bincount(users)[1:].min() >= synthetic.MIN_LENGTH
    assert np.all(np.diff(users) >= 0)
    same = np.diff(users) == 0
    assert np.all(np.diff(times)[same] >= 0)
    assert np.all(times == np.round(times)) and times.min() >= synthetic.BASE_TIME
    assert len(set(zip(users.tolist(), items.tolist()))) == len(users)
    assert set(inter["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 1 <= items.min() and items.max() <= preset["items"]
    # every item linked to its entity; the class column holds the item's KG genres
    link = dict(zip(cols["link"]["item_id"], cols["link"]["entity_id"]))
    assert link == {str(i): f"item:{i}" for i in range(1, preset["items"] + 1)}
    kg = cols["kg"]
    assert set(kg["relation_id"]) == set(synthetic.PLANTED) | set(synthetic.NOISE) | {"co_star", "knows"}
    genres = {}
    for h, r, t in zip(kg["head_id"], kg["relation_id"], kg["tail_id"]):
        assert h.split(":")[0] in ("item", "actor") and t.split(":")[0] in (r, "actor")  # kinds in the tokens
        if r == "genre":
            genres.setdefault(h, []).append(t)
    assert len(set(zip(kg["head_id"], kg["relation_id"], kg["tail_id"]))) == len(kg["head_id"])  # no repeated triple
    for item, classes in zip(cols["item"]["item_id"], cols["item"]["class"]):
        assert 1 <= len(classes) <= 3
        assert [f"genre:{g}" for g in classes] == genres[link[item]]


def test_loads_with_load_dataset(tiny):
    root, _ = tiny
    ds = data.load_dataset(NAME, root, "files", False, 16, 50, TRANSE, log=quiet)
    preset = synthetic.PRESETS["tiny"]
    assert ds.stats["interactions"] == preset["interactions"]
    assert ds.stats["users"] == preset["users"]
    assert ds.stats["triples"] == preset["triples"]
    assert ds.stats["relations"] == len(synthetic.PLANTED) + len(synthetic.NOISE) + 2
    assert ds.stats["dropped_unlinked_interactions"] == 0 and ds.stats["short_users"] == 0
    assert ds.stats["unlinked_items"] == 0
    assert ds.item_kg.shape[1] == 16 and np.isfinite(ds.item_kg).all()


def test_planted_relations_share_values_noise_relations_do_not(tiny):
    root, _ = tiny
    ps = synthetic.planted_share(root, NAME)
    rel = ps["relations"]
    assert ps["pairs"] == synthetic.PRESETS["tiny"]["interactions"] - synthetic.PRESETS["tiny"]["users"]
    for r in ("director", "year"):  # few items per value: consecutive items share it far more than random ones
        assert rel[r]["lift"] >= 3, (r, rel[r])
    assert rel["actor"]["lift"] >= 1.5  # more items per value (and 2-4 values per item): a smaller lift
    assert rel["genre"]["lift"] >= 1.1  # 20 values: random items share a genre a third of the time already
    assert ps["planted"]["lift"] >= 1.3
    for r in synthetic.NOISE:
        assert 0.8 <= rel[r]["lift"] <= 1.25, (r, rel[r])
    assert 0.9 <= ps["noise"]["lift"] <= 1.1


def test_same_seed_same_bytes_other_seed_other_bytes(tiny, tmp_path):
    root, _ = tiny
    synthetic.generate(NAME, str(tmp_path / "a"), "tiny", seed=0, log=quiet)
    synthetic.generate(NAME, str(tmp_path / "b"), "tiny", seed=1, log=quiet)
    assert file_bytes(str(tmp_path / "a")) == file_bytes(root)
    other = file_bytes(str(tmp_path / "b"))
    for k in ("inter", "item", "kg"):
        assert other[k] != file_bytes(root)[k]


def test_refuses_an_existing_dataset_unless_overwrite(tmp_path, capsys):
    root = str(tmp_path)
    argv = ["--name", NAME, "--size", "tiny", "--data_path", root]
    assert synthetic.main(argv) == 0
    before = file_bytes(root)
    ent, _ = data.feature_paths(os.path.join(root, NAME), NAME, "files")
    with open(ent, "w") as f:  # TransE vectors load_dataset cached for the old dataset
        f.write("ent_id:token\tent_vec:float_seq\nitem:1\t1 2\n")
    capsys.readouterr()
    assert synthetic.main(argv + ["--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and NAME in err
    assert file_bytes(root) == before and os.path.exists(ent)
    with pytest.raises(synthetic.UsageError):
        synthetic.generate(NAME, root, "tiny", seed=1, log=quiet)
    assert synthetic.main(argv + ["--seed", "1", "--overwrite"]) == 0
    assert file_bytes(root) != before
    assert not os.path.exists(ent)  # stale vectors go with the old dataset
    assert not [f for f in os.listdir(os.path.join(root, NAME)) if f.startswith("tmp-")]


def test_explicit_sizes_override_the_preset(tmp_path, capsys):
    s = synthetic.generate("o", str(tmp_path), "tiny", users=37, items=160, interactions=1_111, triples=2_000, log=quiet)
    assert (s["users"], s["items"], s["interactions"], s["triples"]) == (37, 160, 1_111, 2_000)
    cols = data.read_atomic(files(str(tmp_path), "o")["inter"])
    assert len(cols["user_id"]) == 1_111 and len(set(cols["user_id"])) == 37
    assert len(data.read_atomic(files(str(tmp_path), "o")["kg"])["head_id"]) == 2_000
    for bad in (["--interactions", "100"],   # 200 users need at least 1,000
                ["--triples", "10"],         # fewer than the items' own triples
                ["--size", "huge"], ["--users", "0"], ["--seed", "-1"]):
        assert synthetic.main(["--name", "bad", "--size", "tiny", "--data_path", str(tmp_path)] + bad) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "bad")  # refused before anything is made


@pytest.mark.parametrize("users,total,cap", [(7, 35, 20), (7, 140, 20), (50, 1_234, 60), (1_000, 150_000, 900)])
def test_user_lengths_sum_exactly_within_bounds(users, total, cap):
    L = synthetic.user_lengths(np.random.default_rng(3), users, total, cap)
    assert L.sum() == total and L.min() >= synthetic.MIN_LENGTH and L.max() <= cap


def test_format_rows_matches_python_formatting():
    rng = np.random.default_rng(0)
    a = np.concatenate([[0, 9, 10, 99_999, 100_000, 10 ** 10, 10 ** 12 + 7], rng.integers(0, 10 ** 11, 200)])
    b = np.concatenate([[-1, 3, -1, 0, 12, -1, 5], rng.integers(-1, 30, 200)])
    got = synthetic.format_rows([(b"x:", a), (b" ", b), (b"\t", a[::-1].copy()), (b"\n", None)])
    want = "".join(f"x:{x}{'' if y < 0 else f' {y}'}\t{z}\n" for x, y, z in zip(a, b, a[::-1])).encode()
    assert got == want
