"""Data for KSR: RecBole's atomic files in, one `Dataset` out; memory O(interactions).

  1. read_atomic       RecBole's atomic files (name:type columns), parsed by pyarrow; a file is
                       written whole or not at all (`replacing`)
  2. load_kg           the dataset's .kg/.link files, or attribute_kg (genre, year, decade from
                       ml-100k.item: RecBole's ml-100k Freebase links are wrong)
  3. build_sequences   each user's items by time, RecBole's prefix samples and leave-one-out;
     sequence_windows  windows of a user's training items (--train_mode sequence); Split.cut
                       cuts a batch's (B, L) arrays from the one array of every user's items
  4. kg_vectors        e_i and r_a: the dataset's .ent_feature/.rel_feature, or TransE's, cached
  5. load_dataset      all of the above, in that order
A run that sets one of RecBole's other data settings (filters, split_ratio, pre-split files) loads
extras/recbole_data.py; a fresh machine fetches ml-100k with extras/fetch.py.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from options import DATA_ARGS, DEFAULTS, KG_CHOICES, DataError, transe_settings


# ----------------------------------------------------------------------------
# 1. Files: RecBole's atomic format, read fast and written whole

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
# The type each column we read must have (RecBole's headers may declare any)
COLUMN_TYPES = {"user_id": "token", "item_id": "token", "timestamp": "float", "head_id": "token", "relation_id": "token",
                "tail_id": "token", "entity_id": "token", "ent_id": "token", "ent_vec": "float_seq", "rel_id": "token",
                "rel_vec": "float_seq", "movie_title": "token_seq", "class": "token_seq", "genre": "token_seq",
                "release_year": "token", "item_id_list": "token_seq"}


class Tokens:
    """A token column: row k holds vocab[codes[k]], the vocab in order of first appearance. A big
    column stays integer codes (no Python string per row); indexing and iterating give strings."""

    def __init__(self, codes, vocab):
        self.codes, self.vocab = codes, vocab  # (n,) int64, list of str

    @classmethod
    def encode(cls, strings):
        ids, vocab = remap(strings)
        return cls(ids - 1, vocab[1:])

    def __len__(self):
        return len(self.codes)

    def __getitem__(self, k):
        return self.vocab[self.codes[k]]

    def __iter__(self):
        return map(self.vocab.__getitem__, self.codes.tolist())


def read_atomic(path, required=(), types=None):
    """A RecBole atomic file as {column name: values}: token -> Tokens, token_seq -> list[list[str]],
    float -> float64 (n,), float_seq -> float32 (n, d). `required`: columns that must be there;
    `types`: the type a column must have (RecBole lets a header declare any: a `timestamp:token`
    would sort by order of appearance). Bad input (not UTF-8, a repeated column, a value that does
    not parse, NaN or inf, vectors of different lengths) is a DataError naming file and line.

    pyarrow parses the file in C++ (20M lines in seconds, no Python object per value); a file it
    refuses, or whose values fail a check, is read again line by line (extras/line_reader.py),
    which names the first bad line (both accept the same files).
    """
    names, types = _read_header(path, required, types)
    try:
        cols = _read_arrow(path, names, types)
    except _Refused:
        from extras.line_reader import read_lines  # the slow path: a bad file, or no pyarrow
        cols = read_lines(path, names, types)
        cols.update({n: Tokens.encode(cols[n]) for n, t in zip(names, types) if t == "token"})
    if not len(cols[names[0]]):
        raise DataError(f"{path}: file has a header but no rows")
    return cols


class _Refused(Exception):  # the fast reader's values fail a check: the line reader finds the line
    pass


def _read_header(path, required, want=None):
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            raw = f.readline().split(b"\r")[0]  # a lone \r ends the line too
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        header = raw.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line 1: byte {e.start} (0x{raw[e.start]:02x}) is not UTF-8") from None
    if not header:
        raise DataError(f"{path}: file is empty (expected a header line of name:type columns)")
    names, types = [], []
    for col in header.split("\t"):
        name, sep, typ = col.partition(":")
        if not sep or typ not in ATOMIC_TYPES:
            raise DataError(f"{path}: line 1: header column {col!r} is not name:type with type in {ATOMIC_TYPES}")
        if name in names:
            raise DataError(f"{path}: line 1: column {name!r} appears twice in the header")
        names.append(name)
        types.append(typ)
    for name in required:
        if name not in names:
            raise DataError(f"{path}: line 1: missing column {name!r} (header has {names})")
    for name, typ in zip(names, types):
        if (want or {}).get(name, typ) != typ:
            raise DataError(f"{path}: line 1: column {name!r} is declared {name}:{typ}, but it must be "
                            f"{name}:{want[name]}")
    return names, types


def _read_arrow(path, names, types):
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
    except ImportError:
        raise _Refused from None
    try:
        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(skip_rows=1, column_names=names),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),  # RecBole's files quote nothing
            convert_options=pcsv.ConvertOptions(column_types={n: pa.float64() if t == "float" else pa.string()
                                                              for n, t in zip(names, types)},
                                                null_values=[], strings_can_be_null=False))
    except pa.ArrowException:  # a wrong column count, a value that does not parse, not UTF-8
        raise _Refused from None
    cols = {}
    for name, typ in zip(names, types):
        col = table.column(name)
        if typ == "token":  # pc.unique lists values in order of first appearance, as remap numbers them
            vocab = pc.unique(col)
            cols[name] = Tokens(pc.index_in(col, value_set=vocab).to_numpy().astype(np.int64), vocab.to_pylist())
        elif typ == "token_seq":
            cols[name] = [v.split() for v in col.to_pylist()]
        elif typ == "float":
            cols[name] = col.to_numpy()
            if not np.isfinite(cols[name]).all():
                raise _Refused
        else:  # float_seq: split on whitespace as str.split does, parse every number at once
            parts = pc.utf8_split_whitespace(col.combine_chunks() if col.num_chunks else pa.array([], pa.string()))
            words = pc.list_flatten(parts)
            real = pc.not_equal(words, "")  # split_whitespace keeps "" at the ends
            per_row = np.bincount(pc.list_parent_indices(parts).to_numpy()[real.to_numpy(zero_copy_only=False)],
                                  minlength=len(col))
            if len(col) and (per_row != per_row[0]).any():
                raise _Refused
            try:
                with np.errstate(over="ignore"):  # 1e39 is finite in float64 only: refused just below, without a warning
                    values = pc.cast(pc.filter(words, real), pa.float64()).to_numpy().astype(np.float32)
            except pa.ArrowInvalid:  # a word that is not a number
                raise _Refused from None
            if not np.isfinite(values).all():  # checked in float32
                raise _Refused
            cols[name] = values.reshape(len(col), per_row[0] if len(col) else 0)
    return cols


def read_fields(path, required, fields=None):
    """read_atomic with RecBole's field names: `fields` maps our column name to the file's (USER_ID_FIELD,
    ...); the columns come back under our names."""
    theirs = {ours: (fields or {}).get(ours, ours) for ours in COLUMN_TYPES}
    cols = read_atomic(path, required=[theirs[c] for c in required],
                       types={theirs[c]: t for c, t in COLUMN_TYPES.items()})
    ours = {f: c for c, f in theirs.items() if c != f}
    return {ours.get(k, k): v for k, v in cols.items()}


def write_atomic(path, header, rows):
    """Write an atomic file (a header of name:type columns, then tab-separated rows)."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary path beside `path`; rename it to `path` on success, remove it on any error: a
    reader never sees half a file, and a failed write (full disk, no permission) is a DataError."""
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale(folder)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"tmp-{os.getpid()}-", suffix="-" + os.path.basename(path))
        os.close(fd)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write it: {e.strerror or e}") from None
        raise


def process_alive(pid):
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale(folder, pattern=r"(?:tmp|\.fetch)-(\d+)-[a-z0-9_]{8}"):
    """Remove what a killed run left in `folder`: temporary files and fetch folders named after a
    process that no longer runs (tmp-<pid>-..., .fetch-<pid>-...)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        m = re.match(pattern, name)
        if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):  # another run may be cleaning up too
                    os.remove(path)


def remap(tokens):
    """Tokens -> contiguous ids from 1 in order of first appearance (0 is padding)."""
    vocab = {}
    ids = np.fromiter((vocab.setdefault(t, len(vocab) + 1) for t in tokens), dtype=np.int64, count=len(tokens))
    return ids, ["[PAD]"] + list(vocab)


def renumber(codes):
    """remap for integer codes (>= 0): ids from 1 in order of first appearance, and the code of
    each id (index 0 for id 1); no sort, no Python loop: O(n + codes)."""
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    first = np.full(n_codes, len(codes), np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))  # the first row of each code
    present = np.flatnonzero(first < len(codes))
    order = present[np.argsort(first[present])]  # the codes as they first appear
    rank = np.zeros(n_codes, np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank[codes], order


def rows_of(tokens, wanted):
    """The row of each wanted token in a Tokens column (a later row wins), -1 where absent."""
    last = np.full(len(tokens.vocab), -1, np.int64)
    codes, first_from_end = np.unique(tokens.codes[::-1], return_index=True)
    last[codes] = len(tokens) - 1 - first_from_end
    index = {tok: last[c] for c, tok in enumerate(tokens.vocab)}
    return np.array([index.get(t, -1) for t in wanted], dtype=np.int64)


# ----------------------------------------------------------------------------
# 2. The knowledge graph

def attribute_kg(item_cols):
    """Triples item -> genre / release_year / decade from ml-100k.item, and the item links; entity
    tokens carry their kind ("item:2", "genre:Action", "year:1995"). RecBole's ml-100k.link is
    KB4Rec's ML-20M table cut at id 1682, but ml-100k numbers its movies differently, so its
    Freebase facts belong to other films (extras/link_check.py): this KG is small but right."""
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


def load_kg(folder, dataset, kg, item_cols=None, fields=None):
    """The KG as token columns: triples (head, relation, tail) and links (item, entity), each
    a tuple of Tokens, and the files read. fields: RecBole's field names (read_fields)."""
    path_of = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    if kg in ("files", "freebase"):
        kgc = read_fields(path_of("kg"), ("head_id", "relation_id", "tail_id"), fields)
        linkc = read_fields(path_of("link"), ("item_id", "entity_id"), fields)
        return ((kgc["head_id"], kgc["relation_id"], kgc["tail_id"]), (linkc["item_id"], linkc["entity_id"]),
                [path_of("kg"), path_of("link")])
    if item_cols is None or not ("class" in item_cols or "genre" in item_cols or "release_year" in item_cols):
        raise DataError(f"{path_of('item')}: --kg attributes needs an .item file with a class/genre or release_year column")
    triples, links = attribute_kg(item_cols)
    columns = lambda rows, n: tuple(Tokens.encode([row[c] for row in rows]) for c in range(n))
    return columns(triples, 3), columns(links, 2), [path_of("item")]


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


# ----------------------------------------------------------------------------
# 3. Sequences and RecBole's sequential split, kept once (CSR) and cut per batch

class UserItems:
    """Every user's items in time order, in one flat array: seqs[u] = items[offsets[u]:offsets[u + 1]]."""

    def __init__(self, items, offsets):
        self.items, self.offsets = items, offsets  # (n_interactions,), (n_users + 2,)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, u):
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def lengths(self):
        return np.diff(self.offsets)


@dataclass
class Split:
    """Samples of `items`, the flat array of every user's items: sample b reads items[starts[b]:ends[b]];
    its target is the next item, items[ends[b]] (prefix samples, valid, test), or for windows the
    next item after every step, the first skip[b] steps context only. Nothing of size (N, L) is
    stored: `cut` builds one batch at a time."""
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
    """RecBole's sequential protocol from interaction arrays: (UserItems, {"train", "valid", "test": Split}).

    Each user's interactions sorted by time (stable: ties keep file order); n of them give the n-1
    samples items[:t] -> items[t], the input cut to its last `max_len` items. Leave-one-out as
    RecBole's _split_index_by_leave_one_out: the last sample test, the one before valid, the rest
    train (n=1: no sample; n=2: one train sample; n=3: train and test, no valid). ratios (train,
    valid, test): RecBole's RS split instead (extras/recbole_data.ratio_split).
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
        from extras.recbole_data import ratio_split  # RecBole's RS split: only a run that sets split_ratio
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


def sequence_windows(seqs, train, max_len, stride):
    """Training windows for --train_mode sequence: a Split whose `cut` gives targets (B, L), 0 = none.

    A user's training items (those before the valid item: the prefix samples' inputs and targets)
    are cut in windows: window k reads items[k*stride : k*stride + max_len] and is trained on the
    next item at every step whose target no earlier window covered. stride = max_len (the default):
    no overlap; a smaller stride gives later targets more context. Every target is covered once.
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
# 4. Knowledge-graph vectors: the dataset's own, or TransE (transe.py), cached

DEFAULT_TRANSE = transe_settings(DEFAULTS)
TRANSE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transe.py")


def feature_paths(folder, dataset, kg, tag=None):
    """The dataset's KG vector files (RecBole's names), or ours beside them (the attribute KG, other TransE settings)."""
    stem = (dataset if kg == "files" else f"{dataset}.{kg}") + (f".{tag}" if tag else "")
    return os.path.join(folder, f"{stem}.ent_feature"), os.path.join(folder, f"{stem}.rel_feature")


def kg_vectors(folder, dataset, kg, triples, entity_tokens, relation_tokens, dim, transe_settings, log, show=True):
    """(entity vectors (E, K), relation vectors (R, K), found (E,) bool, TransE's Hits@10 or None).

    The dataset's .ent_feature/.rel_feature when it has them (a user's files, used as they are).
    Otherwise TransE (transe.py, imported only then), trained once and cached in RecBole's format;
    <ent_feature>.json, written first, marks the files as ours and records what made them (the
    settings and transe.py's sha256): a cache made otherwise is trained again, never reused.
    """
    ent_path, rel_path = feature_paths(folder, dataset, kg)
    if transe_settings != DEFAULT_TRANSE and (os.path.exists(ent_path + ".json") or not os.path.exists(ent_path)):
        # other TransE settings: a cache of their own, so runs side by side (compare.py) never replace each other's
        ent_path, rel_path = feature_paths(folder, dataset, kg, "transe-{optimizer}-e{epochs}-lr{lr}-s{seed}".format(
            lr=transe_settings["learning_rate"] or "default", **transe_settings))
    meta_path = ent_path + ".json"
    with open(TRANSE_SOURCE, "rb") as f:
        want = {"dim": dim, **transe_settings, "transe.py": hashlib.sha256(f.read()).hexdigest()[:16]}
    ours = os.path.exists(meta_path)
    have = [f for f in (ent_path, rel_path) if os.path.exists(f)]
    if len(have) == 1 and not ours:
        missing = rel_path if have == [ent_path] else ent_path
        raise DataError(f"{missing}: not found, but {have[0]} is there and was not written by this project: add the "
                        f"missing file, or remove {have[0]} to have TransE vectors trained for both")
    meta = {}
    with contextlib.suppress(ValueError, OSError):  # none, or damaged: ours all the same (a user's files have none)
        with open(meta_path, encoding="utf-8") as f:
            meta = json.loads(f.readline())
    if ours and len(have) == 2 and meta.get("made_with") != want:
        was = meta.get("made_with")
        changed = ", ".join(sorted(k for k in want if was.get(k) != want[k])) if isinstance(was, dict) else None
        log(f"KG vectors: {ent_path} " + (f"was made with other settings ({changed})" if changed else
                                          f"has no readable record of what made it ({meta_path})") + "; training them again")
        os.remove(ent_path)  # first: the entity file's presence marks a complete cache
        have = [rel_path]
    if len(have) < 2:
        import transe  # only to train the vectors: a run with them cached never loads it
        log(f"KG vectors: training TransE on {len(triples)} triples ({len(entity_tokens)} entities, "
            f"{len(relation_tokens)} relations, K={dim})")
        made = transe.resolve(transe_settings, len(triples))  # "auto": dense or lazy by the KG's size
        entity_kg, relation_kg, hits = transe.train_transe(triples, len(entity_tokens), len(relation_tokens), dim=dim,
                                                           epochs=made["epochs"], lr=made["learning_rate"],
                                                           seed=made["seed"], optimizer=made["optimizer"], log=log, show=show)
        fmt = lambda v: " ".join(map("{:.6g}".format, v.tolist()))  # Python floats: formatted twice as fast
        meta = {"transe_hits@10": hits, "triples": int(len(triples)), "made_with": want,
                "transe": transe.record(dim, made["epochs"], made["learning_rate"], made["seed"], made["optimizer"])}
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
    seqs: UserItems          # user id -> item ids sorted by time (None for benchmark files: samples only)
    train: Split
    valid: Split
    test: Split
    entity_tokens: list
    relation_tokens: list    # relation a <-> row a of relation_kg (R real relations, no padding row)
    triples: np.ndarray      # (T, 3) entity, relation, entity ids
    item_entity: np.ndarray  # (n_items + 1,) entity id of each item, -1 if unlinked
    item_kg: np.ndarray      # (n_items + 1, K) pretrained entity vector e_i of each item (0 if unlinked)
    relation_kg: np.ndarray  # (R, K) pretrained relation vectors r_a
    item_titles: list = None
    benchmark: bool = False  # splits read from benchmark_filename's files
    fingerprint: str = ""    # what a checkpoint records of its data
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self):
        return len(self.user_tokens) - 1

    @property
    def n_items(self):
        return len(self.item_tokens) - 1


def load_dataset(dataset, data_path, kg, keep_unlinked, kg_embedding_size, max_len, transe_settings, log=print,
                 data_args=None, show=True):
    """Load <data_path>/<dataset>/ into a `Dataset`, preparing what is missing.

    kg: "files" (the dataset's .kg/.link files; "freebase" is ml-100k's name for them) or "attributes"
    (built from the .item file). transe_settings: options.transe_settings, for vectors trained here.
    data_args: RecBole's data settings (DATA_ARGS; one not at its DEFAULTS value is extras/recbole_data.py's
    work). Every step is vectorised over interactions and triples; Python loops run over vocabularies.
    """
    a = {**{k: DEFAULTS[k] for k in DATA_ARGS}, **(data_args or {})}
    changed = {k: v for k, v in a.items() if v != DEFAULTS[k]}  # RecBole's settings this run sets
    recbole = None
    if changed:
        from extras import recbole_data as recbole
    kg = "files" if kg == "freebase" else kg
    folder = os.path.join(data_path, dataset)
    path_of = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    used = find_files(dataset, data_path, kg, a, recbole, log)
    fields = recbole.field_names(a) if recbole else None  # RecBole's *_FIELD: the files' column names
    item_cols = read_fields(path_of("item"), ("item_id",), fields) if os.path.exists(path_of("item")) else None
    (heads, rels, tails), links, kg_files = load_kg(folder, dataset, kg, item_cols, fields)
    triples, entity_tokens, relation_tokens, item_link, kg_keep = link_kg(heads, rels, tails, *links, path_of("link"), a,
                                                                           recbole, log)
    if a["benchmark_filename"]:  # RecBole's pre-split files of samples: used as they are, no filter
        parts = [read_fields(path, ("user_id", "item_id", "item_id_list"),
                             {**fields, "item_id_list": a["ITEM_ID_FIELD"] + "_list"}) for path in used]
        flat, width, bounds, user_tokens, item_tokens = recbole.benchmark_splits(parts, used)
        seqs, splits = None, {name: Split(flat, *b, width) for name, b in zip(("train", "valid", "test"), bounds)}
        n_filtered, left = None, None
    else:
        seqs, splits, user_tokens, item_tokens, n_filtered, left = interactions(
            path_of, fields, item_cols, item_link, keep_unlinked, max_len, a, recbole, kg_keep, log)
    used += kg_files
    for name, n in (("test", 3), ("valid", 4)):
        if len(splits[name]) == 0:
            raise DataError(f"{used[0]}: no user has the {n} interactions a {name} sample needs")
    short = int((seqs.lengths()[1:] < 4).sum()) if seqs is not None and a["split_ratio"] is None else 0
    if short:
        log(f"warning: {path_of('inter')}: {short} users have fewer than 4 interactions; as in RecBole, 1 gives no "
            f"sample, 2 a training sample only, 3 a training and a test sample but no valid sample")

    # e_i and r_a: the dataset's own, or TransE's, cached (of the whole KG: the vectors belong to the dataset;
    # RecBole too reads them whole, whatever its filters keep)
    entity_kg, relation_kg, found, hits = kg_vectors(folder, dataset, kg, triples, entity_tokens, relation_tokens,
                                                     kg_embedding_size, transe_settings, log, show)
    if kg_keep is not None or a["kg_reverse_r"]:
        triples, relation_tokens, relation_kg = recbole.kg_after_filters(triples, kg_keep, relation_tokens, relation_kg,
                                                                         a["kg_reverse_r"])
    item_entity = np.array([-1] + [item_link.get(t, -1) for t in item_tokens[1:]], dtype=np.int64)
    if (missing := int((~found[np.unique(item_entity[item_entity >= 0])]).sum())):
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
                 entity_tokens, relation_tokens, triples, item_entity, item_kg, relation_kg, titles,
                 benchmark=bool(a["benchmark_filename"]))
    if a["load_col"] and "user" in a["load_col"] and os.path.exists(path_of("user")):
        used.append(path_of("user"))  # its table filters the interactions
    ds.fingerprint = fingerprint(used, {"kg": kg, "keep_unlinked": keep_unlinked, "max_len": max_len, **changed})
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


def fingerprint(paths, extra):
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for path in paths:
        fh = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                fh.update(chunk)
        h.update(fh.digest())
    return h.hexdigest()[:16]


BIG_INTER_FILE = 64 << 20  # bytes: a smaller .inter file fits in any machine's memory (extras/fetch.check_ram)


def find_files(dataset, data_path, kg, a, recbole, log):
    """The interaction files this run reads, after the checks before reading any: the folder (ml-100k
    fetched when missing), the --kg, the files, the columns load_col keeps, the memory needed."""
    folder = os.path.join(data_path, dataset)
    if not os.path.isdir(folder):
        if dataset != "ml-100k":
            raise DataError(f"{folder}: dataset folder not found (put the RecBole atomic files "
                            f"{dataset}.inter, .kg, .link there)")
        from extras.fetch import fetch_ml100k  # a fresh machine: the one download
        remove_stale(data_path)  # a fetch that was killed
        fetch_ml100k(data_path, log=log)
    if kg not in KG_CHOICES:
        raise DataError(f"--kg: unknown value {kg!r} (choose one of {', '.join(KG_CHOICES)})")
    path_of = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    used = [path_of(f"{b}.inter") for b in a["benchmark_filename"]] if a["benchmark_filename"] else [path_of("inter")]
    for path in used + ([path_of("kg"), path_of("link")] if kg == "files" else []):
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found")
    if recbole:
        recbole.check_columns(a, kg, used[0])
    if os.path.getsize(used[0]) > BIG_INTER_FILE:
        from extras.fetch import check_ram
        check_ram(used[0], log)
    return used


def link_kg(heads, rels, tails, link_items, link_entities, link_path, a, recbole, log):
    """The KG as integer triples (head, relation, tail ids), its entity and relation tokens, each
    item token's entity id, and the triples RecBole's KG filter keeps (None: all)."""
    head_ids, tail_ids, entity_tokens = entity_ids(heads, tails)
    relation_tokens = rels.vocab  # relations numbered from 0 in order of first appearance
    triples = np.stack([head_ids, rels.codes, tail_ids], axis=1)
    ent_index = {tok: i for i, tok in enumerate(entity_tokens)}
    link_entity = np.array([ent_index.get(e, -1) for e in link_entities.vocab], dtype=np.int64)[link_entities.codes]
    if (link_entity < 0).any():
        k = int(np.argmax(link_entity < 0))
        raise DataError(f"{link_path}: line {k + 2}: entity {link_entities[k]!r} of item {link_items[k]!r} "
                        f"does not appear in the KG")
    item_link = dict(zip(link_items, link_entity.tolist()))  # a later row for the same item wins
    kg_keep = None
    if a["entity_kg_num_interval"] or a["relation_kg_num_interval"]:
        kg_keep, item_link = recbole.filter_kg(triples, len(entity_tokens), len(relation_tokens), item_link, a, log)
    return triples, entity_tokens, relation_tokens, item_link, kg_keep


def interactions(path_of, fields, item_cols, item_link, keep_unlinked, max_len, a, recbole, kg_keep, log):
    """The .inter file's interactions, RecBole's filters applied, those whose item has no KG link dropped
    (RecBole's KG datasets), renumbered and split: (UserItems, splits, user tokens, item tokens,
    interactions left by the filters, {filter step: interactions left after it})."""
    inter = read_fields(path_of("inter"), ("user_id", "item_id"), fields)
    users_tok, items_tok = inter["user_id"], inter["item_id"]
    times = inter["timestamp"] if "timestamp" in inter else np.arange(len(users_tok), dtype=np.float64)
    rows, left = np.arange(len(users_tok)), {"read": len(users_tok)}
    if recbole:
        rows, left = recbole.filter_interactions(users_tok.codes, items_tok.codes, times, inter, recbole.id_tables(
            a, path_of, read_fields, fields, item_cols, users_tok, items_tok, inter), a, path_of("inter"))
    n_filtered = len(rows)
    if not keep_unlinked:
        rows = rows[np.array([i in item_link for i in items_tok.vocab], dtype=bool)[items_tok.codes[rows]]]
        if not len(rows):
            raise DataError(f"{path_of('inter')}: no interaction has an item linked in {path_of('link')}"
                            + (" (after the filters)" if len(left) > 1 else ""))
        if len(left) > 1 or kg_keep is not None:
            left["KG link"] = len(rows)
    users, user_codes = renumber(users_tok.codes[rows])
    items, item_codes = renumber(items_tok.codes[rows])
    user_tokens = ["[PAD]"] + [users_tok.vocab[c] for c in user_codes]
    item_tokens = ["[PAD]"] + [items_tok.vocab[c] for c in item_codes]
    seqs, splits = build_sequences(users, items, times[rows], max_len, a["split_ratio"])
    if len(left) > 1:
        log("filter: interactions " + " -> ".join(f"{n} ({step})" for step, n in left.items())
            + f"; {len(user_tokens) - 1} users, {len(item_tokens) - 1} items")
    return seqs, splits, user_tokens, item_tokens, n_filtered, left
