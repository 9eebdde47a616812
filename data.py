"""Data for KSR: ml-100k out of the box, RecBole's leave-one-out sequences, knowledge-graph
vectors, all in one Dataset.

Reading order:
  1. fetch_ml100k        - ml-100k from the recbole wheel on the package index
  2. attribute_kg        - a small, correct KG built from ml-100k.item (genre, year, decade)
  3. build_sequences     - sort by time, RecBole's prefix samples and leave-one-out;
     sequence_windows    - whole windows of a user's training items (--train_mode sequence);
     Split.cut           - a batch's (B, L) arrays, cut from the one array of every user's items
  4. kg_vectors          - the dataset's .ent_feature/.rel_feature, or TransE (transe.py), cached
                           with a record of what made them
  5. load_dataset        - all of the above into one `Dataset`, memory O(interactions)
The files themselves are read by atomic_files.py (RecBole's format) and written through
files.py (whole or absent).

`python data.py --dataset ml-100k [--kg files|attributes] [--json]` prepares everything and
prints the statistics (options and defaults: cli.py's).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch

import transe
from atomic_files import Tokens, read_atomic, remap, renumber, rows_of, write_atomic  # noqa: F401 (remap: tests)
from cli import (DATA_ARGS, DEFAULTS, KG_CHOICES, DataError, cli, default_kg, option_parser, parse_intervals,
                 transe_settings)
from files import remove_stale

ML100K_WHEEL = "recbole==1.2.1"
ML100K_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.kg", "ml-100k.link", "ml-100k.user")


# ----------------------------------------------------------------------------
# 1. ml-100k without a manual step

def fetch_ml100k(data_path, log=print):
    """Put RecBole's ml-100k atomic files in <data_path>/ml-100k/.

    The only reachable host is the Python package index, and the recbole wheel carries
    ml-100k as atomic files. We download the wheel (without installing it), check its
    sha256, extract the five files into a temporary folder and rename it into place.
    """
    target = os.path.join(data_path, "ml-100k")
    try:
        os.makedirs(data_path, exist_ok=True)
    except OSError as e:
        raise DataError(f"{data_path}: cannot make the data folder ({e.strerror or e})") from None
    manual = (f"put {', '.join(ML100K_FILES)} (from recbole/dataset_example/ml-100k/ in the "
              f"{ML100K_WHEEL} wheel or RecBole's repository) into {target}/ by hand")
    remove_stale(data_path)
    try:  # a full disk or a file-size limit while extracting: one line, as for any file (files.replacing)
        with tempfile.TemporaryDirectory(dir=data_path, prefix=f".fetch-{os.getpid()}-") as tmp:
            log(f"ml-100k: downloading the {ML100K_WHEEL} wheel (it carries ml-100k as atomic files)...")
            cmd = [sys.executable, "-m", "pip", "download", ML100K_WHEEL, "--no-deps", "--quiet", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
            if proc.returncode != 0 or len(wheels) != 1:
                why = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise DataError(f"{target}: missing, and downloading {ML100K_WHEEL} failed ({why}); {manual}")
            whl = os.path.join(tmp, wheels[0])
            verify_sha256(whl, ML100K_WHEEL_SHA256, manual)
            out = os.path.join(tmp, "ml-100k")
            os.makedirs(out)
            with zipfile.ZipFile(whl) as z:
                for name in ML100K_FILES:
                    with z.open(f"recbole/dataset_example/ml-100k/{name}") as src, open(os.path.join(out, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)
            try:
                os.rename(out, target)  # atomic: the folder appears complete or not at all
            except OSError:
                if not os.path.isdir(target):  # not another run that put it there first
                    raise
    except OSError as e:  # (the temporary folder is gone with the with-block)
        raise DataError(f"{target}: cannot write it: {e.strerror or e}") from None
    log(f"ml-100k: {len(ML100K_FILES)} files in {target}")
    return target


def verify_sha256(path, expected, manual=""):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise DataError(f"{path}: sha256 {h.hexdigest()} does not match the expected {expected}" + (f"; {manual}" if manual else ""))


# ----------------------------------------------------------------------------
# 2. A correct attribute KG for ml-100k

def attribute_kg(item_cols):
    """Triples item -> genre / release_year / decade built from ml-100k.item.

    RecBole's ml-100k.link is KB4Rec's ML-20M link table cut at id 1682, but ml-100k
    numbers its movies differently, so its Freebase facts belong to other films (see
    link_check and the README). This KG is small but right. Returns (triples, links)
    with entity tokens prefixed by their kind ("item:2", "genre:Action", "year:1995").
    """
    triples, links = [], []
    genres = item_cols.get("class") or item_cols.get("genre")
    years = item_cols.get("release_year")
    for k, item in enumerate(item_cols["item_id"]):
        head = f"item:{item}"
        links.append((item, head))
        for g in (genres[k] if genres else []):
            triples.append((head, "genre", f"genre:{g}"))
        if years is not None and years[k].isdigit():
            y = int(years[k])
            triples.append((head, "release_year", f"year:{y}"))
            triples.append((head, "decade", f"decade:{y // 10 * 10}s"))
    return triples, links


# ----------------------------------------------------------------------------
# 3. Sequences and RecBole's sequential split, kept once (CSR) and cut per batch

class UserItems:
    """Every user's items in time order, in one flat array: user u's are
    items[offsets[u]:offsets[u + 1]] (user 0, the padding id, has none). seqs[u] is that view."""

    def __init__(self, items, offsets):
        self.items, self.offsets = items, offsets  # (n_interactions,), (n_users + 2,)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, u):
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def __iter__(self):
        return (self[u] for u in range(len(self)))

    def lengths(self):
        return np.diff(self.offsets)


@dataclass
class Split:
    """Samples cut from `items`, the flat array of every user's items (UserItems.items).

    Sample b reads items[starts[b]:ends[b]]. Its target is the next item, items[ends[b]]
    (prefix samples, valid, test: build_sequences), or, for windows (sequence_windows), the
    next item after every step, the first skip[b] steps only context. Nothing of size
    (N, L) is stored: memory is O(interactions), and `cut` builds one batch at a time.
    """
    items: np.ndarray     # (n_interactions,) item ids, shared by every split
    users: np.ndarray     # (N,) user ids
    starts: np.ndarray    # (N,)
    ends: np.ndarray      # (N,)
    width: int            # L, the padded width of a batch: min(max_len, longest sample)
    skip: np.ndarray = None  # (N,) windows only

    def __len__(self):
        return len(self.users)

    @property
    def lengths(self):
        return self.ends - self.starts

    def n_targets(self):
        return int(self.lengths.sum() - self.skip.sum()) if self.skip is not None else len(self)

    def cut(self, rows):
        """Samples `rows` as arrays: item_seq (B, L) padded with 0 on the right, lengths (B,),
        and targets (B,), or (B, L) for windows with 0 = no target at that step."""
        starts, lengths = self.starts[rows], self.ends[rows] - self.starts[rows]
        steps = np.arange(self.width)
        real = steps < lengths[:, None]  # (B, L)
        idx = np.where(real, starts[:, None] + steps, 0)
        item_seq = np.where(real, self.items[idx], 0)
        if self.skip is None:
            return item_seq, lengths, self.items[self.ends[rows]]
        has_target = real & (steps >= self.skip[rows][:, None])
        return item_seq, lengths, np.where(has_target, self.items[idx + has_target], 0)


def ragged_arange(counts):
    """[0..counts[0]-1, 0..counts[1]-1, ...] without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def build_sequences(users, items, times, max_len, ratios=None):
    """RecBole's sequential protocol from interaction arrays (user id, item id, time).

    Each user's interactions are sorted by time (stable, so ties keep file order). A user
    with n interactions gives n-1 samples `items[:t] -> items[t]` (t = 1..n-1), the input
    cut to its last `max_len` items. Leave-one-out as RecBole's
    `_split_index_by_leave_one_out(.., 2)`: the last sample is test, the one before it
    valid, the rest train. Short users, exactly as RecBole: n=1 gives no sample; n=2 one
    train sample and no valid/test; n=3 one train and one test sample, no valid.
    ratios (train, valid, test): RecBole's RS split instead (split_by_ratio grouped by user, on the
    samples in time order): each user's first samples train, the next valid, the last test.
    Returns (UserItems, {"train": Split, "valid": Split, "test": Split}).
    """
    order = np.lexsort((times, users))  # by user, then time; lexsort is stable
    items = items[order]
    n_users = int(users.max()) if len(users) else 0
    counts = np.bincount(users, minlength=n_users + 1)  # interactions per user id
    offsets = np.concatenate([[0], np.cumsum(counts)])
    u = np.flatnonzero(counts)  # users with interactions
    n_samples = counts[u] - 1
    if ratios is None:
        n_eval = np.minimum(2, np.maximum(n_samples - 1, 0))  # RecBole's legal_leave_one_num
        n_valid, n_test = (n_eval == 2).astype(np.int64), (n_eval >= 1).astype(np.int64)
    else:
        n_valid, n_test = ratio_split(n_samples, ratios)
    n_train = n_samples - n_valid - n_test
    width = max(1, min(max_len, int(n_samples.max()) if len(u) else 1))  # padded width: no wider than needed

    def split(users, t):  # sample items[:t] -> items[t] of each user, t >= 1
        s = offsets[users]
        return Split(items, users, s + np.maximum(0, t - max_len), s + t, width)
    return UserItems(items, offsets), {  # t = 1..n_train of each user, then the valid t, then the test t
        "train": split(np.repeat(u, n_train), ragged_arange(n_train) + 1),
        "valid": split(np.repeat(u, n_valid), np.repeat(n_train, n_valid) + ragged_arange(n_valid) + 1),
        "test": split(np.repeat(u, n_test), np.repeat(n_train + n_valid, n_test) + ragged_arange(n_test) + 1),
    }


def ratio_split(tot, ratios):
    """(valid, test) sample counts of each user with `tot` samples: RecBole's Dataset._calcu_split_ids
    for ratios (train, valid, test), vectorised. Valid and test are int(ratio * tot); train takes
    the rest, then gives one sample to a part (test first) whose share is in (0, 1), while train
    keeps more than one."""
    r = np.asarray(ratios, np.float64) / sum(ratios)
    tot = np.asarray(tot, np.int64)
    cnt = [None, (r[1] * tot).astype(np.int64), (r[2] * tot).astype(np.int64)]
    cnt[0] = tot - cnt[1] - cnt[2]
    going = np.ones(len(tot), bool)
    for i in (2, 1):  # RecBole's loop over i = 1, 2: cnt[-i] is test, then valid
        going &= cnt[0] > 1  # its `break`
        give = going & (r[i] * tot > 0) & (r[i] * tot < 1)
        cnt[i], cnt[0] = cnt[i] + give, cnt[0] - give
    return cnt[1], cnt[2]


def sequence_windows(seqs, train, max_len, stride):
    """Training windows for --train_mode sequence: each user's training items, cut in
    windows of at most `max_len` inputs; the model predicts the next item at every step.

    A user's training items are those before the valid item (exactly the items the prefix
    samples of `train` use: inputs and targets). Window k reads items[s : s + max_len] with
    s = k * stride and is trained on the next item at each step, except at steps whose
    target an earlier window already covered (they only give context). stride = max_len
    (the default, DEFAULTS): windows do not overlap and every step has a target. A smaller stride
    overlaps windows so that later targets see at least max_len - stride items of context:
    window k > 0 skips its first max_len - stride steps. Every training target is covered
    exactly once. Returns a Split with `skip` (its `cut` gives targets (B, L), 0 = no loss).
    """
    if not 1 <= stride <= max_len:
        raise DataError(f"--window_stride: must be in 1..{max_len}, got {stride}")
    n_train = np.bincount(train.users, minlength=len(seqs))  # targets per user: items[1..n_train]
    n_windows = np.where(n_train > 0, -(-np.maximum(n_train - max_len, 0) // stride) + 1, 0)
    users = np.repeat(np.arange(len(seqs)), n_windows)
    k = ragged_arange(n_windows)
    starts = k * stride
    ends = np.minimum(starts + max_len, n_train[users])  # inputs items[s:e], targets items[s+1:e+1]
    skip = np.where(k > 0, max_len - stride, 0)
    width = max(1, min(max_len, int((ends - starts).max()) if len(users) else 1))
    offset = seqs.offsets[users]
    return Split(seqs.items, users, offset + starts, offset + ends, width, skip)


# ----------------------------------------------------------------------------
# 3b. RecBole's filters (its Dataset._data_filtering, KnowledgeBasedDataset's), in its order. Each
#     default (DEFAULTS: rm_dup_inter None, no intervals, ...) keeps everything.

def within(values, intervals):
    """RecBole's _within_intervals: True where a value lies in one of the intervals (parse_intervals)."""
    values = np.asarray(values, np.float64)
    ok = np.zeros(values.shape, bool)
    for left, low, high, right in intervals:
        ok |= (values >= low if left == "[" else values > low) & (values <= high if right == "]" else values < high)
    return ok


def count_ban(counts, intervals):
    """Codes present (count > 0) whose count lies outside `intervals` (None: no limit), as a boolean per code."""
    return (counts > 0) & ~within(counts, parse_intervals(intervals)) if intervals else np.zeros(len(counts), bool)


def value_mask(col, allowed, field, path):
    """val_interval on one column: a float column's values in the interval, a token column's among the tokens."""
    if isinstance(allowed, list):
        if not isinstance(col, Tokens):
            raise DataError(f"{path}: val_interval: {field} is not a token column, so it takes an interval, not a list")
        return np.isin(np.asarray(col.vocab, dtype=object), [str(x) for x in allowed])[col.codes]
    if not isinstance(col, np.ndarray) or col.ndim != 1:
        raise DataError(f"{path}: val_interval: {field} is not a float column, so it takes [tokens], not an interval")
    return within(col, parse_intervals(allowed))


def filter_interactions(users, items, times, columns, tables, a, path):
    """The rows of the interactions RecBole keeps, in file order, and {step: interactions left after it}.

    users, items: integer codes (Tokens.codes) per interaction; times: its time; columns: the .inter's
    columns by name (for val_interval); tables: {"user" or "item": a boolean per code, True for the ids
    that table keeps}, for the .user/.item tables load_col loads (already filtered by val_interval).
    The steps, in the order of RecBole's Dataset._data_filtering:
      rm_dup_inter    first/last: of a user's interactions with an item, keep the first or the last in
                      time (RecBole sorts by time, then drops the duplicates)
      val_interval    {field: interval}: a float field's values in it; {field: [tokens]}: a token
                      field's values among them (a field of the .inter; the tables' fields are theirs)
      filter_inter_by_user_or_item: the interactions whose user (item) the .user (.item) table keeps
      user_inter_num_interval, item_inter_num_interval: users (items) with a number of interactions
                      in the interval, again and again until nothing changes (the k-core: dropping an
                      item's interactions can take a user below the limit)
    """
    rows, left = np.arange(len(users)), {"read": len(users)}
    if a["rm_dup_inter"]:
        order = np.argsort(times, kind="stable")  # pandas' sort_values in RecBole; stable here: ties keep file order
        if a["rm_dup_inter"] == "last":
            order = order[::-1]
        pair = users[order] * np.int64(int(items.max()) + 1) + items[order]
        _, first = np.unique(pair, return_index=True)  # the first of each (user, item) in that order
        rows = np.sort(order[first])
        left["rm_dup_inter"] = len(rows)
    for field, allowed in (a["val_interval"] or {}).items():
        if field in columns:
            rows = rows[value_mask(columns[field], allowed, field, path)[rows]]
            left[f"val_interval {field}"] = len(rows)
    if a["filter_inter_by_user_or_item"]:
        for name, codes in (("user", users), ("item", items)):
            if name in tables:
                rows = rows[tables[name][codes[rows]]]
                left[f"filter_inter_by_user_or_item ({name})"] = len(rows)
    ui, ii = a["user_inter_num_interval"], a["item_inter_num_interval"]
    n_users, n_items = int(users.max()) + 1 if len(users) else 0, int(items.max()) + 1 if len(items) else 0
    rounds = 0
    while ui or ii:  # RecBole's _filter_by_inter_num: both bans from the same counts, then both applied
        ban_u = count_ban(np.bincount(users[rows], minlength=n_users), ui)
        ban_i = count_ban(np.bincount(items[rows], minlength=n_items), ii)
        if not ban_u.any() and not ban_i.any():
            break
        rows = rows[~(ban_u[users[rows]] | ban_i[items[rows]])]
        rounds += 1
    if ui or ii:
        left[f"inter_num_interval ({rounds} rounds)"] = len(rows)
    return rows, left


def filter_kg(triples, n_entities, n_relations, a):
    """The triples RecBole keeps (KnowledgeBasedDataset._filter_kg_by_triple_num): entities with a
    number of triples (as head plus as tail) in entity_kg_num_interval and relations with one in
    relation_kg_num_interval, again and again until nothing changes. Returns a boolean mask."""
    keep = np.ones(len(triples), bool)
    ei, ri = a["entity_kg_num_interval"], a["relation_kg_num_interval"]
    while ei or ri:
        t = triples[keep]
        ban_e = count_ban(np.bincount(t[:, 0], minlength=n_entities) + np.bincount(t[:, 2], minlength=n_entities), ei)
        ban_r = count_ban(np.bincount(t[:, 1], minlength=n_relations), ri)
        drop = ban_e[t[:, 0]] | ban_e[t[:, 2]] | ban_r[t[:, 1]]
        if not drop.any():
            break
        keep[np.flatnonzero(keep)[drop]] = False
    return keep


def check_columns(a, kg, path):
    """load_col / unload_col (RecBole loads only the columns they name): refuse one that leaves out a
    column this run reads, where RecBole would fail or filter on nothing."""
    need = {"inter": [a["USER_ID_FIELD"], a["ITEM_ID_FIELD"]] + ([a["TIME_FIELD"]] if a["load_col"] else [])}
    if kg == "files":
        need["kg"] = [a["HEAD_ENTITY_ID_FIELD"], a["RELATION_ID_FIELD"], a["TAIL_ENTITY_ID_FIELD"]]
        need["link"] = [a["ITEM_ID_FIELD"], a["ENTITY_ID_FIELD"]]
    for field in a["val_interval"] or {}:
        if a["load_col"] and not any(c == "*" or field in c for c in a["load_col"].values()):
            raise DataError(f"{path}: val_interval: field {field!r} is in no file's load_col")
    for suffix, cols in need.items():
        loaded = (a["load_col"] or {}).get(suffix, "*" if not a["load_col"] else [])
        unloaded = (a["unload_col"] or {}).get(suffix, [])
        for c in cols:
            if (loaded != "*" and c not in loaded) or c in unloaded:
                raise DataError(f"{path}: load_col/unload_col leave out {suffix}'s column {c!r}, which this run reads")


def eval_negatives(ds, split, mode, gen):
    """RecBole's sampled evaluation (eval_args mode uniN / popN): for each sample of `split`, N distinct
    items the user has not interacted with, uniformly or in proportion to popularity (how often an item
    is a target, train, valid and test: RecBole's popularity). "Interacted": every item of the user up
    to this split's last target (RecBole's used ids of the phases so far); for benchmark files, the
    sample's own items. RecBole draws with replacement and ranks the distinct items drawn (a repeat
    counts once), so it ranks a few fewer than N; here exactly N. Returns (len(split), N) int64."""
    n = int(mode[3:])
    targets = np.concatenate([s.items[s.ends] for s in (ds.train, ds.valid, ds.test)])
    weight = np.bincount(targets, minlength=ds.n_items + 1).astype(np.float64) if mode.startswith("pop") else \
        np.ones(ds.n_items + 1)
    weight[0] = 0  # the padding item
    if ds.benchmark:
        lo, hi = split.starts, split.ends + 1
    else:
        last = np.zeros(len(ds.seqs), np.int64)
        np.maximum.at(last, split.users, split.ends + 1)
        lo, hi = ds.seqs.offsets[split.users], last[split.users]
    out = np.zeros((len(split), n), np.int64)
    for c in range(0, len(split), 1024):  # (1024, n_items) at a time
        rows = np.arange(c, min(c + 1024, len(split)))
        w = np.broadcast_to(weight, (len(rows), len(weight))).copy()
        counts = hi[rows] - lo[rows]
        seen = ragged_arange(counts) + np.repeat(lo[rows], counts)
        w[np.repeat(np.arange(len(rows)), counts), split.items[seen]] = 0
        short = (w > 0).sum(1) < n
        if short.any():
            u = ds.user_tokens[split.users[rows[np.argmax(short)]]]
            raise DataError(f"{mode}: user {u!r} has fewer than {n} items to sample (items it has not interacted "
                            f"with{', and with a popularity above 0' if mode.startswith('pop') else ''}): a smaller N, "
                            f"or full")
        out[rows] = torch.multinomial(torch.as_tensor(w), n, replacement=False, generator=gen).numpy()
    return out


# ----------------------------------------------------------------------------
# 4. Knowledge-graph vectors: the dataset's own, or TransE (transe.py), cached

DEFAULT_TRANSE = transe_settings(DEFAULTS)


def feature_paths(folder, dataset, kg, tag=None):
    """The dataset's own KG vector files (RecBole's names), or ours beside them for the attribute KG
    (and for TransE settings other than the defaults: `tag`)."""
    stem = (dataset if kg == "files" else f"{dataset}.{kg}") + (f".{tag}" if tag else "")
    return os.path.join(folder, f"{stem}.ent_feature"), os.path.join(folder, f"{stem}.rel_feature")


def kg_vectors(folder, dataset, kg, triples, entity_tokens, relation_tokens, dim, transe_settings, log):
    """(entity vectors (E, K), relation vectors (R, K), found (E,) bool, TransE's Hits@10 or None).

    The dataset's .ent_feature/.rel_feature when it has them (a user's files: used as they are,
    refused in one line if their dimension is not --kg_embedding_size). Otherwise TransE,
    trained once and cached in RecBole's format; <ent_feature>.json, written first, marks the
    files as ours and records what made them (transe.record): a cache made otherwise (another
    TransE, another setting) is trained again and replaced, never silently reused.
    """
    ent_path, rel_path = feature_paths(folder, dataset, kg)
    settings = transe.resolve(transe_settings, len(triples))  # "auto": dense or lazy by the KG's size
    if transe_settings != DEFAULT_TRANSE and (os.path.exists(ent_path + ".json") or not os.path.exists(ent_path)):
        # ours with other TransE settings than the defaults: a cache of their own beside the default one (whose names
        # are RecBole's), so runs with other settings (compare.py, side by side) never replace each other's vectors
        ent_path, rel_path = feature_paths(folder, dataset, kg, "transe-{optimizer}-e{epochs}-lr{learning_rate}-s{seed}"
                                           .format(**settings))
    meta_path = ent_path + ".json"
    want = transe.record(dim, **{"lr" if k == "learning_rate" else k: v for k, v in settings.items()})
    ours = os.path.exists(meta_path)
    have = [f for f in (ent_path, rel_path) if os.path.exists(f)]
    if len(have) == 1 and not ours:
        missing = rel_path if have == [ent_path] else ent_path
        raise DataError(f"{missing}: not found, but {have[0]} is there and was not written by this project: add the "
                        f"missing file, or remove {have[0]} to have TransE vectors trained for both")
    meta = {}
    if ours:
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.loads(f.readline())
        except (ValueError, OSError):  # damaged: ours all the same (a user's files have no record), so made anew
            meta = {}
    if ours and len(have) == 2 and meta.get("made_with") != want:
        was = meta.get("made_with")
        changed = ", ".join(sorted(k for k in want if was.get(k) != want[k])) if isinstance(was, dict) else None
        log(f"KG vectors: {ent_path} " + (f"was made with other settings ({changed})" if changed else
                                          f"has no readable record of what made it ({meta_path})") + "; training them again")
        os.remove(ent_path)  # first: the entity file's presence marks a complete cache
        have = [rel_path]
    if len(have) < 2:
        log(f"KG vectors: training TransE on {len(triples)} triples ({len(entity_tokens)} entities, "
            f"{len(relation_tokens)} relations, K={dim})")
        entity_kg, relation_kg, hits = transe.train_transe(triples, len(entity_tokens), len(relation_tokens), dim=dim,
                                                           epochs=want["epochs"], lr=want["learning_rate"],
                                                           seed=want["seed"], optimizer=settings["optimizer"], log=log)
        fmt = lambda v: " ".join(map("{:.6g}".format, v.tolist()))  # Python floats: formatted twice as fast
        meta = {"transe_hits@10": hits, "triples": int(len(triples)), "made_with": want}
        write_atomic(meta_path, [json.dumps(meta)], [])
        write_atomic(rel_path, ["rel_id:token", "rel_vec:float_seq"], ([r, fmt(v)] for r, v in zip(relation_tokens, relation_kg)))
        # the entity file last: its presence is what marks the cache as complete
        write_atomic(ent_path, ["ent_id:token", "ent_vec:float_seq"], ([e, fmt(v)] for e, v in zip(entity_tokens, entity_kg)))
        log(f"KG vectors: wrote {ent_path} and {rel_path}; TransE raw tail Hits@10 on a sample of held-out triples = {hits:.4f}")
    # always read the vectors back from the files, so a fresh run and a cached run see the same numbers
    ef = read_atomic(ent_path, required=("ent_id", "ent_vec"), types=COLUMN_TYPES)
    rf = read_atomic(rel_path, required=("rel_id", "rel_vec"), types=COLUMN_TYPES)
    K, K_rel = ef["ent_vec"].shape[1], rf["rel_vec"].shape[1]
    if K != K_rel:
        raise DataError(f"{ent_path}: entity vectors have length {K}, but relation vectors in {rel_path} have {K_rel}")
    if K != dim:  # only a user's files can get here: ours were made for this dim
        raise DataError(f"{ent_path}: the vectors have {K} dimensions, but --kg_embedding_size is {dim}: "
                        f"pass --kg_embedding_size {K}")
    rel_row = rows_of(rf["rel_id"], relation_tokens)
    if (rel_row < 0).any():
        raise DataError(f"{rel_path}: no vector for relation {relation_tokens[int(np.argmax(rel_row < 0))]!r} of the KG")
    ent_row = rows_of(ef["ent_id"], entity_tokens)
    entity_kg = np.where(ent_row[:, None] >= 0, ef["ent_vec"][ent_row], 0).astype(np.float32)  # (E, K)
    return entity_kg, rf["rel_vec"][rel_row], ent_row >= 0, meta.get("transe_hits@10")


# ----------------------------------------------------------------------------
# 5. The dataset

@dataclass
class Dataset:
    name: str
    kg: str
    user_tokens: list        # id -> token, [0] = "[PAD]"
    item_tokens: list
    seqs: list               # user id -> item ids sorted by time
    train: Split
    valid: Split
    test: Split
    entity_tokens: list
    relation_tokens: list    # relation a <-> row a of relation_kg (R real relations, no padding row)
    triples: np.ndarray      # (T, 3) entity, relation, entity ids
    item_entity: np.ndarray  # (n_items + 1,) entity id of each item, -1 if unlinked
    item_kg: np.ndarray      # (n_items + 1, K) pretrained entity vector of each item (0 if unlinked)
    relation_kg: np.ndarray  # (R, K) pretrained relation vectors
    item_titles: list = None
    transe_hits10: float = None
    benchmark: bool = False  # splits read from benchmark_filename's files: samples, no per-user sequences (seqs None)
    fingerprint: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self):
        return len(self.user_tokens) - 1

    @property
    def n_items(self):
        return len(self.item_tokens) - 1


def _fingerprint(paths, extra):
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for p in paths:
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                fh.update(chunk)
        h.update(fh.digest())
    return h.hexdigest()[:16]


BYTES_PER_INTERACTION = 200  # peak RSS of load_dataset per interaction: 168 measured at 20M (docs/scale.md), + a margin


def check_memory(inter_path, log):
    """Refuse, in one line and before any work, a dataset that would not fit in memory: the
    number of interactions (estimated from the file's size and its first lines) times
    BYTES_PER_INTERACTION, against the memory this machine has available now."""
    try:
        size = os.path.getsize(inter_path)
        with open(inter_path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:  # gone, a folder, no permission: the reader's own line
        raise DataError(f"{inter_path}: cannot read it ({e.strerror or e})") from None
    lines = max(1, size * max(head.count(b"\n") - 1, 1) // max(len(head), 1))
    need = lines * BYTES_PER_INTERACTION
    available = available_memory()
    if available is not None and need > available:
        raise DataError(f"{inter_path}: about {lines:,} interactions need about {need / 2 ** 30:.1f} GiB of memory "
                        f"to load and train, but this machine has {available / 2 ** 30:.1f} GiB available")
    if lines > 1_000_000:
        log(f"data: about {lines:,} interactions, about {need / 2 ** 30:.1f} GiB of memory "
            f"({'unknown' if available is None else f'{available / 2 ** 30:.1f} GiB'} available)")


def available_memory():
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# The type each column this project reads must have (RecBole's headers may declare any type)
COLUMN_TYPES = {"user_id": "token", "item_id": "token", "timestamp": "float", "head_id": "token", "relation_id": "token",
                "tail_id": "token", "entity_id": "token", "ent_id": "token", "ent_vec": "float_seq", "rel_id": "token",
                "rel_vec": "float_seq", "movie_title": "token_seq", "class": "token_seq", "genre": "token_seq",
                "release_year": "token", "item_id_list": "token_seq"}


def read_fields(path, required, fields=None):
    """read_atomic with RecBole's field names: `fields` maps our column name to the file's
    (USER_ID_FIELD, ITEM_ID_FIELD, ...: DATA_ARGS); the columns come back under our names."""
    theirs = {ours: (fields or {}).get(ours, ours) for ours in COLUMN_TYPES}
    cols = read_atomic(path, required=[theirs[c] for c in required],
                       types={theirs[c]: t for c, t in COLUMN_TYPES.items()})
    ours = {f: c for c, f in theirs.items() if c != f}
    return {ours.get(k, k): v for k, v in cols.items()}


def field_names(a):
    """{our column name: the files' name} from RecBole's *_FIELD settings."""
    return {"user_id": a["USER_ID_FIELD"], "item_id": a["ITEM_ID_FIELD"], "timestamp": a["TIME_FIELD"],
            "head_id": a["HEAD_ENTITY_ID_FIELD"], "tail_id": a["TAIL_ENTITY_ID_FIELD"],
            "relation_id": a["RELATION_ID_FIELD"], "entity_id": a["ENTITY_ID_FIELD"]}


def load_kg(folder, dataset, kg, item_cols=None, fields=None):
    """The KG as token columns: triples (head, relation, tail) and links (item, entity), each
    a tuple of Tokens, and the files read. fields: RecBole's field names (read_fields)."""
    p = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    if kg in ("files", "freebase"):
        kgc = read_fields(p("kg"), ("head_id", "relation_id", "tail_id"), fields)
        linkc = read_fields(p("link"), ("item_id", "entity_id"), fields)
        return ((kgc["head_id"], kgc["relation_id"], kgc["tail_id"]), (linkc["item_id"], linkc["entity_id"]),
                [p("kg"), p("link")])
    if item_cols is None or not ("class" in item_cols or "genre" in item_cols or "release_year" in item_cols):
        raise DataError(f"{p('item')}: --kg attributes needs an .item file with a class/genre or release_year column")
    triples, links = attribute_kg(item_cols)
    columns = lambda rows, n: tuple(Tokens.encode([row[c] for row in rows]) for c in range(n))
    return columns(triples, 3), columns(links, 2), [p("item")]


def id_tables(a, p, fields, item_cols, users_tok, items_tok, inter_columns):
    """The .user/.item tables RecBole loads (those load_col names), each filtered by val_interval on its
    own fields: {"user" or "item": a boolean per code of the .inter's users (items), True where the
    table keeps the id} (filter_interactions' `tables`). A val_interval field in none of the files
    loaded is refused, as RecBole refuses it."""
    tables, seen = {}, set(inter_columns)
    for name, tok in (("user", users_tok), ("item", items_tok)):
        if not (a["load_col"] and name in a["load_col"] and os.path.exists(p(name))):
            continue
        cols = item_cols if name == "item" else read_fields(p("user"), ("user_id",), fields)
        ok = np.ones(len(cols[f"{name}_id"]), bool)
        for field, allowed in (a["val_interval"] or {}).items():
            if field in cols:
                ok &= value_mask(cols[field], allowed, field, p(name))
        seen |= set(cols)
        ids = cols[f"{name}_id"]
        kept = set(np.asarray(ids.vocab, dtype=object)[np.unique(ids.codes[ok])].tolist())
        tables[name] = np.array([t in kept for t in tok.vocab], dtype=bool)
    for field in a["val_interval"] or {}:
        if field not in seen:
            raise DataError(f"{p('inter')}: val_interval: field {field!r} is in none of the files loaded (RecBole: "
                            f"'Field [{field}] not defined in dataset')")
    return tables


def benchmark_splits(parts, paths):
    """RecBole's benchmark_filename for a sequential model: three files (train, valid, test) of
    samples, one a line: a user, the items before the target (<ITEM_ID_FIELD>_list, a token_seq,
    oldest first) and the target (ITEM_ID_FIELD). Used as given: RecBole filters none of them and
    cuts no list. Returns (None, {"train", "valid", "test": Split}, user tokens, item tokens)."""
    users, items, flat, bounds = {}, {}, [], []
    for cols, path in zip(parts, paths):
        starts, ends, who = [], [], []
        for k, (u, before, target) in enumerate(zip(cols["user_id"], cols["item_id_list"], cols["item_id"])):
            if not before:
                raise DataError(f"{path}: row {k + 1}: an empty item list (a sample needs an item before its target)")
            starts.append(len(flat))
            flat += [items.setdefault(t, len(items) + 1) for t in before]
            ends.append(len(flat))
            flat.append(items.setdefault(target, len(items) + 1))  # the target: items[end]
            who.append(users.setdefault(u, len(users) + 1))
        bounds.append((np.array(who, np.int64), np.array(starts, np.int64), np.array(ends, np.int64)))
    flat = np.array(flat, np.int64)
    width = max(int((e - s).max()) for _, s, e in bounds)
    splits = {name: Split(flat, *b, width) for name, b in zip(("train", "valid", "test"), bounds)}
    return None, splits, ["[PAD]"] + list(users), ["[PAD]"] + list(items)


def kg_after_filters(triples, keep, relation_tokens, relation_kg, reverse):
    """The KG the model reads after RecBole's KG filter (`keep`: the triples kept, None: all) and
    kg_reverse_r: the relations left, renumbered; with reverse, for each triple (h, r, t) also
    (t, r_r, h), RecBole's reverse relation "<r>_r", whose vector is minus r's (TransE: h + r = t,
    so t - r = h; RecBole gives it whatever its rel_feature file has, a zero vector if nothing)."""
    if keep is not None:
        triples = triples[keep]
        left = np.unique(triples[:, 1])  # relation ids number relations in order of first appearance: kept so
        new = np.full(len(relation_tokens), -1, np.int64)
        new[left] = np.arange(len(left))
        triples = np.stack([triples[:, 0], new[triples[:, 1]], triples[:, 2]], axis=1)
        relation_tokens, relation_kg = [relation_tokens[r] for r in left], relation_kg[left]
    if reverse:
        R = len(relation_tokens)
        triples = np.concatenate([triples, np.stack([triples[:, 2], triples[:, 1] + R, triples[:, 0]], axis=1)])
        relation_tokens = list(relation_tokens) + [f"{r}_r" for r in relation_tokens]
        relation_kg = np.concatenate([relation_kg, -relation_kg])
    return triples, relation_tokens, relation_kg


def entity_ids(heads, tails):
    """Number the entities of the triples from 0 in order of first appearance, reading
    head, tail, head, tail, ... as the file lists them. Returns (head ids, tail ids, tokens)."""
    vocab = {}
    h = np.array([vocab.setdefault(x, len(vocab)) for x in heads.vocab], dtype=np.int64)
    t = np.array([vocab.setdefault(x, len(vocab)) for x in tails.vocab], dtype=np.int64)
    both = np.stack([h[heads.codes], t[tails.codes]], axis=1).reshape(-1)  # (2T,) h0 t0 h1 t1 ...
    ids, codes = renumber(both)
    tokens = list(vocab)
    return ids[0::2] - 1, ids[1::2] - 1, [tokens[c] for c in codes]


def load_dataset(dataset, data_path, kg, keep_unlinked, kg_embedding_size, max_len, transe_settings, log=print,
                 data_args=None):
    """Load <data_path>/<dataset>/ into a `Dataset`, preparing what is missing.

    kg: "files" (the dataset's own .kg/.link files; "freebase", ml-100k's name for them: RecBole's
    KG datasets link items to Freebase) or "attributes" (built from the .item file's genre and
    year columns). transe_settings: cli.transe_settings, used when the vectors are trained here.
    data_args: RecBole's data settings (DATA_ARGS; the ones left out take DEFAULTS, which
    change nothing): field names, load_col/unload_col, the filters (filter_interactions, filter_kg,
    then the KG link filter: RecBole's order), split_ratio (RecBole's RS split), benchmark_filename
    (pre-split files of samples, benchmark_splits).
    Every step is vectorised over interactions and triples (tokens as integer codes);
    Python loops run over vocabularies (items, entities) only.
    """
    a = {**{k: DEFAULTS[k] for k in DATA_ARGS}, **(data_args or {})}
    fields = field_names(a)
    # The order of the checks: the folder, the files, the memory they need, then their contents
    # (the name is an option's: cli.dataset_name)
    folder = os.path.join(data_path, dataset)
    if not os.path.isdir(folder):
        if dataset == "ml-100k":
            fetch_ml100k(data_path, log=log)
        else:
            raise DataError(f"{folder}: dataset folder not found (put the RecBole atomic files "
                            f"{dataset}.inter, .kg, .link there)")
    if kg not in KG_CHOICES:
        raise DataError(f"--kg: unknown value {kg!r} (choose one of {', '.join(KG_CHOICES)})")
    kg = "files" if kg == "freebase" else kg  # two names for the dataset's own files: one from here on
    p = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    used = [p(f"{b}.inter") for b in a["benchmark_filename"]] if a["benchmark_filename"] else [p("inter")]
    for path in used + ([p("kg"), p("link")] if kg == "files" else []):
        if not os.path.isfile(path):  # before check_memory, which needs the .inter's size
            raise DataError(f"{path}: file not found")
    check_columns(a, kg, used[0])
    check_memory(used[0], log)

    if a["benchmark_filename"]:
        parts = [read_fields(path, ("user_id", "item_id", "item_id_list"), {**fields, "item_id_list": a["ITEM_ID_FIELD"]
                                                                             + "_list"}) for path in used]
    else:
        inter = read_fields(p("inter"), ("user_id", "item_id"), fields)
    item_cols = read_fields(p("item"), ("item_id",), fields) if os.path.exists(p("item")) else None

    # --- knowledge graph: triples and item -> entity links
    (heads, rels, tails), (link_items, link_entities), kg_files = load_kg(folder, dataset, kg, item_cols, fields)
    used += kg_files
    head_ids, tail_ids, entity_tokens = entity_ids(heads, tails)
    relation_tokens = rels.vocab  # relations numbered from 0 in order of first appearance
    triples = np.stack([head_ids, rels.codes, tail_ids], axis=1)
    ent_index = {tok: i for i, tok in enumerate(entity_tokens)}
    link_entity = np.array([ent_index.get(e, -1) for e in link_entities.vocab], dtype=np.int64)[link_entities.codes]
    if (link_entity < 0).any():
        k = int(np.argmax(link_entity < 0))
        raise DataError(f"{p('link')}: line {k + 2}: entity {link_entities[k]!r} of item {link_items[k]!r} "
                        f"does not appear in the KG")
    item_link = dict(zip(link_items, link_entity.tolist()))  # a later row for the same item wins
    kg_keep = None  # RecBole's KG filter: the triples kept (None: all)
    if a["entity_kg_num_interval"] or a["relation_kg_num_interval"]:
        kg_keep = filter_kg(triples, len(entity_tokens), len(relation_tokens), a)
        in_kg = np.zeros(len(entity_tokens), bool)
        in_kg[triples[kg_keep][:, [0, 2]].ravel()] = True
        item_link = {i: e for i, e in item_link.items() if in_kg[e]}  # _filter_link: entities no longer in the KG
        log(f"filter: KG {len(triples)} -> {int(kg_keep.sum())} triples; {len(item_link)} items still linked")

    if a["benchmark_filename"]:  # RecBole applies no filter to pre-split files, its KG link filter included
        n_filtered, left = None, None
        seqs, splits, user_tokens, item_tokens = benchmark_splits(parts, used)
        short = 0
    else:
        # --- interactions: RecBole's filters, then drop the ones whose item has no KG link (RecBole's KG datasets)
        users_tok, items_tok = inter["user_id"], inter["item_id"]
        n_raw = len(users_tok)
        times = inter["timestamp"] if "timestamp" in inter else np.arange(n_raw, dtype=np.float64)
        rows, left = filter_interactions(users_tok.codes, items_tok.codes, times, inter,
                                         id_tables(a, p, fields, item_cols, users_tok, items_tok, inter), a, p("inter"))
        n_filtered = len(rows)
        if not keep_unlinked:
            rows = rows[np.array([i in item_link for i in items_tok.vocab], dtype=bool)[items_tok.codes[rows]]]
            if not len(rows):
                raise DataError(f"{p('inter')}: no interaction has an item linked in {p('link')}"
                                + (" (after the filters)" if len(left) > 1 else ""))
            if len(left) > 1 or kg_keep is not None:
                left["KG link"] = len(rows)
        users, user_codes = renumber(users_tok.codes[rows])
        items, item_codes = renumber(items_tok.codes[rows])
        user_tokens = ["[PAD]"] + [users_tok.vocab[c] for c in user_codes]
        item_tokens = ["[PAD]"] + [items_tok.vocab[c] for c in item_codes]
        seqs, splits = build_sequences(users, items, times[rows], max_len, a["split_ratio"])
        del inter, users_tok, items_tok, rows, users, items, times  # the interactions live on in seqs only
        if len(left) > 1:
            log("filter: interactions " + " -> ".join(f"{n} ({step})" for step, n in left.items())
                + f"; {len(user_tokens) - 1} users, {len(item_tokens) - 1} items")
        short = int((seqs.lengths()[1:] < 4).sum()) if a["split_ratio"] is None else 0
    if len(splits["test"]) == 0:
        raise DataError(f"{used[-1]}: no user has the 3 interactions a train/valid/test split needs")
    if len(splits["valid"]) == 0:
        raise DataError(f"{used[0]}: no user has the 4 interactions a valid sample needs (early stopping reads it)")
    if short:
        log(f"warning: {p('inter')}: {short} users have fewer than 4 interactions; as in RecBole, 1 gives no "
            f"sample, 2 a training sample only, 3 a training and a test sample but no valid sample")
    item_entity = np.array([-1] + [item_link.get(t, -1) for t in item_tokens[1:]], dtype=np.int64)

    # --- pretrained KG vectors: the dataset's own, or TransE trained once and cached (on the whole KG: the
    # vectors belong to the dataset; RecBole too reads them whole, whatever its filters keep)
    entity_kg, relation_kg, found, hits = kg_vectors(folder, dataset, kg, triples, entity_tokens, relation_tokens,
                                                     kg_embedding_size, transe_settings, log)
    triples, relation_tokens, relation_kg = kg_after_filters(triples, kg_keep, relation_tokens, relation_kg,
                                                             a["kg_reverse_r"])
    missing = int((~found[np.unique(item_entity[item_entity >= 0])]).sum())
    if missing:
        log(f"warning: {feature_paths(folder, dataset, kg)[0]}: no vector for {missing} linked item entities; "
            f"their items get a zero KG vector")
    item_kg = np.zeros((len(item_tokens), entity_kg.shape[1]), np.float32)
    linked = item_entity >= 0
    item_kg[linked] = entity_kg[item_entity[linked]]

    titles = None
    if item_cols is not None and "movie_title" in item_cols:
        t = dict(zip(item_cols["item_id"], (" ".join(x) for x in item_cols["movie_title"])))
        titles = ["[PAD]"] + [t.get(tok, tok) for tok in item_tokens[1:]]

    ds = Dataset(dataset, kg, user_tokens, item_tokens, seqs, splits["train"], splits["valid"], splits["test"],
                 entity_tokens, relation_tokens, triples, item_entity, item_kg, relation_kg, titles, hits,
                 benchmark=bool(a["benchmark_filename"]))
    changed = {k: v for k, v in a.items() if v != DEFAULTS[k]}  # defaults: the fingerprint of before them
    if a["load_col"] and "user" in a["load_col"] and os.path.exists(p("user")):
        used.append(p("user"))  # its table filters the interactions
    ds.fingerprint = _fingerprint(used, {"kg": kg, "keep_unlinked": keep_unlinked, "max_len": max_len, **changed})
    n_kept = len(seqs.items) if seqs is not None else None
    ds.stats = {
        "dataset": dataset, "kg": kg, "users": ds.n_users, "items": ds.n_items, "interactions": n_kept,
        "dropped_unlinked_interactions": n_filtered - n_kept if n_filtered is not None else 0, "short_users": short,
        "train_samples": len(ds.train), "valid_samples": len(ds.valid), "test_samples": len(ds.test),
        "entities": len(entity_tokens), "relations": len(relation_tokens), "triples": int(len(triples)),
        "linked_items": int(linked[1:].sum()), "unlinked_items": int((~linked[1:]).sum()),
        "transe_hits@10": hits, "fingerprint": ds.fingerprint,
    }
    if left and len(left) > 1:
        ds.stats["filters"] = left  # interactions left after each of RecBole's filters
    return ds


# ----------------------------------------------------------------------------

def main(argv=None):
    ap = option_parser("data.py", "Prepare a RecBole knowledge-aware dataset for KSR and print its statistics.",
                       names=("dataset", "data_path", "kg", "keep_unlinked", "kg_embedding_size", "MAX_ITEM_LIST_LENGTH",
                              "transe_epochs", "transe_learning_rate", "transe_seed", "transe_optimizer",
                              "config_files", *DATA_ARGS))
    ap.add_argument("--json", action="store_true", help="print the statistics as one JSON object on the last line")
    return cli(lambda argv: prepare(parse_args(ap, argv)), sys.argv[1:] if argv is None else list(argv))


def parse_args(ap, argv):
    args = ap.parse_args(argv)
    if args.config_files:  # a RecBole config: its data settings here (the training ones are train.py's)
        import recbole_config
        recbole_config.apply(ap, argv, args.config_files, other_programs=True)
        args = ap.parse_args(argv)
    return args


def prepare(args):
    args.kg = args.kg or default_kg(args.dataset)
    log = lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)
    ds = load_dataset(args.dataset, args.data_path, args.kg, args.keep_unlinked, args.kg_embedding_size,
                      args.MAX_ITEM_LIST_LENGTH, transe_settings(vars(args)), log=log,
                      data_args={k: getattr(args, k) for k in DATA_ARGS})
    stats = dict(ds.stats)
    for k, v in stats.items():
        log(f"{k:>30}: {v}")
    if args.json:
        print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
