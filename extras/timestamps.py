"""How RecBole's float32 min-max normalised timestamps reorder ml-100k's sequences.

    python docs/timestamps.py [--kg freebase|attributes]

RecBole's ml-100k.yaml sets normalize_all: True: the timestamp column is scaled to [0, 1]
in float64, then stored as a float32 tensor, which merges times that differ by less than
float32 can tell apart; its stable sort keeps file order for merged ones. data.py keeps the
exact times. This prints how many distinct times merge and how many sequences and samples
come out differently (docs/recbole-differences.md).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import train  # noqa: E402


def main():
    cfg = vars(train.parse_args(sys.argv[1:]))
    folder = os.path.join(cfg["data_path"], cfg["dataset"])
    inter = data.read_atomic(os.path.join(folder, f"{cfg['dataset']}.inter"))
    item_file = os.path.join(folder, f"{cfg['dataset']}.item")
    _, links, _ = data.load_kg(folder, cfg["dataset"], cfg["kg"], data.read_atomic(item_file) if os.path.exists(item_file) else None)
    linked = {i for i, _ in links}
    keep = np.array([i in linked for i in inter["item_id"]])  # data.py's (and RecBole's) unlinked filter
    pick = lambda col: [x for x, k in zip(inter[col], keep) if k]
    users, _ = data.remap(pick("user_id"))
    items, _ = data.remap(pick("item_id"))
    t = np.asarray(pick("timestamp"), dtype=np.float64)
    t32 = ((t - t.min()) / (t.max() - t.min())).astype(np.float32).astype(np.float64)  # RecBole's stored times
    print(f"{cfg['dataset']} (kg {cfg['kg']}): {len(t)} interactions, distinct times {len(np.unique(t))} exact, "
          f"{len(np.unique(t32))} after float32 min-max normalisation")
    seqs, exact = data.build_sequences(users, items, t, cfg["MAX_ITEM_LIST_LENGTH"])
    seqs32, merged = data.build_sequences(users, items, t32, cfg["MAX_ITEM_LIST_LENGTH"])
    print(f"users whose sequence is ordered differently: {sum(not np.array_equal(a, b) for a, b in zip(seqs, seqs32))}")
    for name in ("train", "valid", "test"):
        a, b = exact[name], merged[name]
        diff = (a.item_seq != b.item_seq).any(1) | (a.targets != b.targets)
        print(f"{name} samples that differ: {int(diff.sum())} of {len(a)}")


if __name__ == "__main__":
    main()
