"""Are a KG's links right? Genre agreement between the KG and the dataset's own labels.

    python -m extras.link_check --dataset ml-100k       # both KGs: RecBole's Freebase files and the attribute KG

RecBole's ml-100k.link is KB4Rec's ML-20M link table cut at id 1682, but ml-100k numbers its
items otherwise, so its items are linked to other films (item 2, GoldenEye, to Jumanji).
This measures it: if the links are right, items that share a genre in the KG share a genre
label of the .item file far more often than random pairs (lift >> 1). An extra program:
nothing in the core imports it.
"""
import contextlib
import json
import os
import sys

import numpy as np

import data
from options import DataError, cli, option_parser


def link_check(triples, links, item_cols, label_column="class", seed=0):
    """How much do the KG's genre facts agree with the dataset's own genre labels?

    Take pairs of items that share a genre entity in the KG (a relation whose name
    contains "genre", from the item's entity to the genre). If the links are right, such
    pairs share a label in `label_column` of the .item file far more often than random
    pairs do; the ratio is the lift (1.0: the KG's genres say nothing about the labels).
    `triples` and `links` are token tuples as load_kg returns them.
    """
    if item_cols is None or label_column not in item_cols:
        return None
    labels = dict(zip(item_cols["item_id"], (frozenset(x) for x in item_cols[label_column])))
    item_of = {e: i for i, e in links if i in labels}
    rels = sorted({r for _, r, _ in triples if "genre" in r.lower()})
    members = {}  # genre entity -> items
    for h, r, t in triples:
        if r in rels and h in item_of:
            members.setdefault(t, set()).add(item_of[h])
    items = sorted(set(item_of.values()))
    if not members or len(items) < 2:
        return None
    rng = np.random.default_rng(seed)
    a, b = rng.integers(len(items), size=(2, 200_000))
    keep = a != b
    base = float(np.mean([bool(labels[items[x]] & labels[items[y]]) for x, y in zip(a[keep], b[keep])]))
    share = total = 0
    for group in members.values():
        m = sorted(group)
        if len(m) < 2:
            continue
        x, y = np.triu_indices(len(m), 1)
        if len(x) > 20_000:  # sample the pairs of the big genres
            k = rng.integers(len(x), size=20_000)
            x, y = x[k], y[k]
        share += sum(bool(labels[m[i]] & labels[m[j]]) for i, j in zip(x, y))
        total += len(x)
    given = share / max(total, 1)
    return {"relations": rels, "pairs": int(total), "p_share_label_given_kg": given,
            "p_share_label_random": base, "lift": given / base if base else float("nan")}


def check(args):
    folder = os.path.join(args.data_path, args.dataset)
    if not os.path.isdir(folder) and args.dataset == "ml-100k":
        from extras.fetch import fetch_ml100k
        fetch_ml100k(args.data_path)
    item_file = os.path.join(folder, f"{args.dataset}.item")
    item_cols = data.read_atomic(item_file, types=data.COLUMN_TYPES) if os.path.exists(item_file) else None
    out = {}
    for kg in ("files", "attributes"):
        with contextlib.suppress(DataError):  # a KG this dataset does not have
            triples, links, _ = data.load_kg(folder, args.dataset, kg, item_cols)
            out[kg] = lc = link_check(list(zip(*triples)), list(zip(*links)), item_cols)
            if lc is None:
                print(f"{kg} KG: needs an .item file with a 'class' column and a KG relation named *genre*")
            else:
                print(f"{kg} KG ({', '.join(lc['relations'])}): items that share a KG genre share a .item genre label "
                      f"{lc['p_share_label_given_kg']:.3f} of the time, random pairs {lc['p_share_label_random']:.3f}: "
                      f"lift {lc['lift']:.2f} (1.0 = the KG's genres say nothing)")
    if not out:
        raise DataError(f"{folder}: no KG to check (neither .kg/.link files nor an .item file)")
    if args.json:
        print(json.dumps(out))
    return 0


def main(argv=None):
    ap = option_parser("link_check.py", "Do a dataset's KG genres agree with its own genre labels?",
                       names=("dataset", "data_path"))
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    return cli(lambda argv: check(ap.parse_args(argv)), sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
