"""extras/recommend.py: what a trained model recommends is its full_scores' ranking, for a user, for any
items (tokens or ids alike), for every user at once; seen items are left out unless asked for; each bad
input is one line and exit 2."""
import json
import os

import numpy as np
import pytest
import torch

import train
from extras import recommend
from test_train import tiny_cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import write_tiny_dataset
    root = tmp_path_factory.mktemp("rec")
    write_tiny_dataset(str(root), n_users=30, n_items=25, n_inter=(6, 14))
    out = str(root / "run")
    res = train.run(tiny_cfg(str(root), out, epochs=2, train_mode="sequence", MAX_ITEM_LIST_LENGTH=5, window_stride=5),
                    log=lambda m: None)
    model, ds = recommend.ksr_load(os.path.join(out, "model.pt"))
    return out, res, model, ds, str(root)


def test_a_test_users_history_ranks_the_target_where_results_json_does(tiny_run):
    """recommend() over a test user's items before the target (cut to the trained length, as the
    evaluation cuts them), seen items kept as the protocol keeps them: the target's place is the rank
    results.json records."""
    _, res, model, ds, _ = tiny_run
    ranks = dict(zip(res["ranks"]["test"]["user"], res["ranks"]["test"]["rank"]))
    for user, rank in list(ranks.items())[:10]:
        items = ds.seqs[ds.user_tokens.index(user)].tolist()
        target = ds.item_tokens[items[-1]]
        got = recommend.recommend(model, ds, items=items[:-1], k=ds.n_items, keep_seen=True)
        assert [t for t, _ in got].index(target) + 1 == rank, user


def test_tokens_and_ids_are_the_same_items(tiny_run):
    _, _, model, ds, _ = tiny_run
    ids = [3, 7, 1, 12]
    by_token = recommend.recommend(model, ds, items=[ds.item_tokens[i] for i in ids], k=6)
    assert by_token == recommend.recommend(model, ds, items=ids, k=6)
    with torch.no_grad():
        scores = model.full_scores(model(torch.tensor([ids]), torch.tensor([4]))[0])[0]
    unseen = [i for i in range(1, ds.n_items + 1) if i not in ids]
    assert by_token[0][1] == pytest.approx(float(scores[unseen].max()))  # the best item the sequence lacks


def test_seen_items_are_left_out_unless_kept(tiny_run):
    _, _, model, ds, _ = tiny_run
    user = ds.user_tokens[5]
    seen = {ds.item_tokens[i] for i in ds.seqs[5].tolist()}
    left = recommend.recommend(model, ds, user=user, k=ds.n_items - len(seen))
    assert not seen & {t for t, _ in left} and len(left) == ds.n_items - len(seen)
    kept = recommend.recommend(model, ds, user=user, k=ds.n_items, keep_seen=True)
    assert {t for t, _ in kept} == set(ds.item_tokens[1:])  # every item, its own among them
    assert recommend.recommend(model, ds, user=user, k=ds.n_items) == left  # k past the unseen ones: those alone


def test_users_all_is_each_users_own_call(tiny_run, tmp_path):
    out, _, model, ds, _ = tiny_run
    path = tmp_path / "top.tsv"
    assert train.main(["recommend", os.path.join(out, "model.pt"), "--users", "all", "--k", "4", "--out", str(path)]) == 0
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    assert len(rows) == 4 * ds.n_users
    for u in range(1, 21):
        user = ds.user_tokens[u]
        want = recommend.recommend(model, ds, user=user, k=4)
        got = [(r[2], float(r[3])) for r in rows if r[0] == user]
        assert [t for t, _ in got] == [t for t, _ in want] and [int(r[1]) for r in rows if r[0] == user] == [1, 2, 3, 4]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)


def test_the_command_prints_json_and_why(tiny_run, capsys):
    out, _, model, ds, _ = tiny_run
    assert train.main(["recommend", os.path.join(out, "model.pt"), "--user", ds.user_tokens[2], "--k", "3",
                       "--why", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res["top"]] == [1, 2, 3] and all(r["slot"] in res["attention"] for r in res["top"])
    assert sum(res["attention"].values()) == pytest.approx(1) and res["keep_seen"] is False
    assert [r["item"] for r in res["top"]] == [t for t, _ in recommend.recommend(model, ds, user=ds.user_tokens[2], k=3)]


@pytest.mark.parametrize("args, needle", [
    (["--items", "nope,3"], "no item 'nope'"),
    (["--items", ","], "an empty list of items"),
    (["--item_ids", "0"], "no item 0"),
    (["--user", "nobody"], "no user 'nobody'"),
    (["--user", "u3", "--k", "0"], "argument --k: must be positive"),
    (["--user", "u3", "--k", "999"], "k must be in 1..25"),
    (["--users", "all"], "--users all and --out go together"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_run, capsys, args, needle):
    out = tiny_run[0]
    rc = train.main(["recommend", os.path.join(out, "model.pt"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and needle in err and "Traceback" not in err, err


def test_a_checkpoint_of_other_data_is_one_line_and_exit_2(tiny_run, capsys):
    out, _, _, _, root = tiny_run
    inter = os.path.join(root, "tiny", "tiny.inter")
    original = open(inter).read()
    try:
        with open(inter, "a") as f:
            f.write("u1\t3\t4\t99999999\n")  # the data changed since the model was trained
        rc = train.main(["recommend", os.path.join(out, "model.pt"), "--user", "u3"])
    finally:
        with open(inter, "w") as f:
            f.write(original)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "fingerprint" in err and err.count("\n") == 0, err
