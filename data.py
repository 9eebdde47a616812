"""Data for KSR: RecBole atomic files, ml-100k out of the box, leave-one-out
sequences and knowledge-graph embeddings.

Reading order:
  1. read_atomic         - one RecBole atomic file (tab-separated, `name:type` header); token
                           columns come back as integer codes (Tokens), parsed by pyarrow
  2. fetch_ml100k        - ml-100k from the recbole wheel on the package index
  3. attribute_kg        - a small, correct KG built from ml-100k.item (genre, year, decade)
  4. build_sequences     - sort by time, RecBole's prefix samples and leave-one-out;
     sequence_windows    - whole windows of a user's training items (--train_mode sequence);
     Split.cut           - a batch's (B, L) arrays, cut from the one array of every user's items
  5. KG vectors          - the dataset's .ent_feature/.rel_feature, or TransE (transe.py), cached
  6. load_dataset        - all of the above into one `Dataset`, memory O(interactions)
  7. link_check          - do the KG's genres agree with the dataset's own genre labels?

`python data.py --dataset ml-100k [--kg freebase|attributes] [--json]` prepares
everything and prints the statistics (options and defaults: train.py's).
"""
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

import transe
from cli import UserError, cli

ML100K_WHEEL = "recbole==1.2.1"
ML100K_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.kg", "ml-100k.link", "ml-100k.user")


class DataError(UserError):
    """Bad input. The message is one line naming the file (and line) and what is wrong."""


# ----------------------------------------------------------------------------
# 1. Atomic files

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


class Tokens:
    """A token column, encoded: row k holds vocab[codes[k]], the vocab in order of first
    appearance. A big column stays integer codes (no Python string per row); indexing and
    iterating give the strings, which is what the small files (.item, .link) are read with."""

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


def read_atomic(path, required=()):
    """Read a RecBole atomic file into {column name: values}.

    token -> Tokens, token_seq -> list[list[str]], float -> float64 array (n,),
    float_seq -> float32 array (n, d). `required` names columns that must be present.
    Bad input (not UTF-8, a repeated column, a value that does not parse, NaN or inf in a
    float, vectors of different lengths) is a DataError naming file and line.

    pyarrow's CSV reader parses the file in C++ on every core (20M lines in seconds, no
    Python object per value). A file it refuses, or whose values fail our checks, is read
    again line by line by _read_lines, which names the first bad line (or reads what arrow
    would not: both accept the same files).
    """
    names, types = _read_header(path, required)
    try:
        cols = _read_arrow(path, names, types)
    except _Refused:
        cols = _read_lines(path, names, types)
    if not len(cols[names[0]]):
        raise DataError(f"{path}: file has a header but no rows")
    return cols


class _Refused(Exception):
    """The fast reader's values fail a check: _read_lines finds the line."""


def _read_header(path, required):
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        raw = f.readline()
    try:
        header = raw.decode("utf-8").rstrip("\r\n")
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
            values = pc.cast(pc.filter(words, real), pa.float64()).to_numpy()
            if not np.isfinite(values).all():
                raise _Refused
            cols[name] = values.astype(np.float32).reshape(len(col), per_row[0] if len(col) else 0)
    return cols


def _read_lines(path, names, types):
    """The same file, line by line in Python: slow, but it names the line that is wrong."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}: byte {e.start} (0x{raw[e.start]:02x}) is not UTF-8") from None
    cols = {n: [] for n in names}
    vec_len = {}
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != len(names):
            raise DataError(f"{path}: line {lineno}: expected {len(names)} tab-separated columns, found {len(parts)}")
        for name, typ, value in zip(names, types, parts):
            if typ == "token":
                cols[name].append(value)
            elif typ == "token_seq":
                cols[name].append(value.split())
            else:
                try:
                    v = float(value) if typ == "float" else np.array(value.split(), dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path}: line {lineno}: column {name!r}: cannot parse {value!r} as {typ}") from None
                if not np.all(np.isfinite(v)):
                    raise DataError(f"{path}: line {lineno}: column {name!r}: {value!r} is not finite (NaN or inf)")
                if typ == "float_seq":
                    n = vec_len.setdefault(name, len(v))
                    if len(v) != n:
                        raise DataError(f"{path}: line {lineno}: column {name!r}: vector of length {len(v)}, earlier rows have {n}")
                cols[name].append(v)
    for name, typ in zip(names, types):
        if typ == "token":
            cols[name] = Tokens.encode(cols[name])
        elif typ == "float":
            cols[name] = np.array(cols[name], dtype=np.float64)
        elif typ == "float_seq":
            cols[name] = np.array(cols[name], dtype=np.float32).reshape(len(cols[name]), vec_len.get(name, 0))
    return cols


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
    """Remove what a killed run left in `folder`: temporary files and fetch folders named
    after a process that no longer runs (they carry its pid: tmp-<pid>-..., .fetch-<pid>-...)."""
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


@contextlib.contextmanager
def replaced_atomically(path):
    """Yield a temporary path beside `path`; on success rename it to `path`, on any error
    remove it. A reader never sees a half-written file; a write that fails (full disk, a
    file-size limit, no permission) is a DataError naming `path`."""
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


def save_atomic(obj, path):
    """results.json (a dict) or a checkpoint (torch.save), written with replaced_atomically."""
    if path.endswith(".json"):
        payload = json.dumps(obj, indent=1).encode()
    else:
        import torch  # only checkpoints need it
        buf = io.BytesIO()
        torch.save(obj, buf)  # in memory first: torch's own writer turns a full disk into an opaque RuntimeError
        payload = buf.getbuffer()
    with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)


def prepare_run_folder(folder, run_files, overwrite):
    """Make a training run's folder, before any long work. A folder holding a run (any of
    run_files) is refused unless overwrite; then those files go first, so a results.json and
    a model.pt of two different runs never sit side by side."""
    held = [f for f in run_files if os.path.exists(f)]
    if held and not overwrite:
        raise DataError(f"{folder}: holds a run ({', '.join(map(os.path.basename, held))}); choose another --out_dir, "
                        f"or pass --overwrite to replace it")
    try:
        os.makedirs(folder, exist_ok=True)
        for f in held:
            os.remove(f)
        tempfile.TemporaryFile(dir=folder).close()  # can we write there? (the file vanishes on close)
    except OSError as e:
        raise DataError(f"{folder}: cannot write the run there ({e.strerror or e})") from None


def write_atomic(path, header, rows):
    """Write an atomic file (a header of name:type columns, then tab-separated rows)."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


# ----------------------------------------------------------------------------
# 2. ml-100k without a manual step

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
            if not os.path.isdir(target):
                raise
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
# 3. A correct attribute KG for ml-100k

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
# 4. Sequences and RecBole's sequential split, kept once (CSR) and cut per batch

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


def remap(tokens):
    """Tokens -> contiguous ids from 1 in order of first appearance (0 is padding)."""
    vocab = {}
    ids = np.fromiter((vocab.setdefault(t, len(vocab) + 1) for t in tokens), dtype=np.int64, count=len(tokens))
    return ids, ["[PAD]"] + list(vocab)


def renumber(codes):
    """remap for integer codes (>= 0): ids from 1 in order of first appearance, and the code
    of each id (index 0 for id 1). No sort of the codes, no Python loop: O(n + codes)."""
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    first = np.full(n_codes, len(codes), np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))  # the first row of each code
    present = np.flatnonzero(first < len(codes))
    order = present[np.argsort(first[present])]  # the codes as they first appear
    rank = np.zeros(n_codes, np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank[codes], order


def ragged_arange(counts):
    """[0..counts[0]-1, 0..counts[1]-1, ...] without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def build_sequences(users, items, times, max_len):
    """RecBole's sequential protocol from interaction arrays (user id, item id, time).

    Each user's interactions are sorted by time (stable, so ties keep file order). A user
    with n interactions gives n-1 samples `items[:t] -> items[t]` (t = 1..n-1), the input
    cut to its last `max_len` items. Leave-one-out as RecBole's
    `_split_index_by_leave_one_out(.., 2)`: the last sample is test, the one before it
    valid, the rest train. Short users, exactly as RecBole: n=1 gives no sample; n=2 one
    train sample and no valid/test; n=3 one train and one test sample, no valid.
    Returns (UserItems, {"train": Split, "valid": Split, "test": Split}).
    """
    order = np.lexsort((times, users))  # by user, then time; lexsort is stable
    items = items[order]
    n_users = int(users.max()) if len(users) else 0
    counts = np.bincount(users, minlength=n_users + 1)  # interactions per user id
    offsets = np.concatenate([[0], np.cumsum(counts)])
    u = np.flatnonzero(counts)  # users with interactions
    n_samples = counts[u] - 1
    n_eval = np.minimum(2, np.maximum(n_samples - 1, 0))  # RecBole's legal_leave_one_num
    n_train = n_samples - n_eval
    width = max(1, min(max_len, int(n_samples.max()) if len(u) else 1))  # padded width: no wider than needed

    def split(users, t):  # sample items[:t] -> items[t] of each user, t >= 1
        s = offsets[users]
        return Split(items, users, s + np.maximum(0, t - max_len), s + t, width)
    return UserItems(items, offsets), {
        "train": split(np.repeat(u, n_train), ragged_arange(n_train) + 1),  # t = 1..n_train of each user
        "valid": split(u[n_eval == 2], n_train[n_eval == 2] + 1),
        "test": split(u[n_eval >= 1], n_samples[n_eval >= 1]),
    }


def sequence_windows(seqs, train, max_len, stride=None):
    """Training windows for --train_mode sequence: each user's training items, cut in
    windows of at most `max_len` inputs; the model predicts the next item at every step.

    A user's training items are those before the valid item (exactly the items the prefix
    samples of `train` use: inputs and targets). Window k reads items[s : s + max_len] with
    s = k * stride and is trained on the next item at each step, except at steps whose
    target an earlier window already covered (they only give context). stride = max_len
    (the default): windows do not overlap and every step has a target. A smaller stride
    overlaps windows so that later targets see at least max_len - stride items of context:
    window k > 0 skips its first max_len - stride steps. Every training target is covered
    exactly once. Returns a Split with `skip` (its `cut` gives targets (B, L), 0 = no loss).
    """
    stride = stride or max_len
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
# 5. Knowledge-graph vectors: the dataset's own, or TransE (transe.py), cached

TRANSE_SEED = 2020  # the vectors are a property of the dataset, not of a training run's seed


def feature_paths(folder, dataset, kg):
    stem = dataset if kg == "freebase" else f"{dataset}.{kg}"
    return os.path.join(folder, f"{stem}.ent_feature"), os.path.join(folder, f"{stem}.rel_feature")


# ----------------------------------------------------------------------------
# 6. The dataset

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
    size = os.path.getsize(inter_path)
    with open(inter_path, "rb") as f:
        head = f.read(1 << 20)
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


def rows_of(tokens, wanted):
    """The row of each wanted token in a Tokens column (a later row wins), -1 where absent."""
    last = np.full(len(tokens.vocab), -1, np.int64)
    codes, first_from_end = np.unique(tokens.codes[::-1], return_index=True)
    last[codes] = len(tokens) - 1 - first_from_end
    index = {tok: last[c] for c, tok in enumerate(tokens.vocab)}
    return np.array([index.get(t, -1) for t in wanted], dtype=np.int64)


def default_kg(dataset):
    """ml-100k: the attribute KG (RecBole's Freebase links for it point at other films, see
    link_check); any other dataset: its own .kg/.link files."""
    return "attributes" if dataset == "ml-100k" else "freebase"


def load_kg(folder, dataset, kg, item_cols=None):
    """The KG as token columns: triples (head, relation, tail) and links (item, entity), each
    a tuple of Tokens, and the files read."""
    p = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    if kg == "freebase":
        kgc = read_atomic(p("kg"), required=("head_id", "relation_id", "tail_id"))
        linkc = read_atomic(p("link"), required=("item_id", "entity_id"))
        return ((kgc["head_id"], kgc["relation_id"], kgc["tail_id"]), (linkc["item_id"], linkc["entity_id"]),
                [p("kg"), p("link")])
    if item_cols is None or not ("class" in item_cols or "genre" in item_cols or "release_year" in item_cols):
        raise DataError(f"{p('item')}: --kg attributes needs an .item file with a class/genre or release_year column")
    triples, links = attribute_kg(item_cols)
    columns = lambda rows, n: tuple(Tokens.encode([row[c] for row in rows]) for c in range(n))
    return columns(triples, 3), columns(links, 2), [p("item")]


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


def load_dataset(dataset, data_path, kg, keep_unlinked, kg_embedding_size, max_len, log=print):
    """Load <data_path>/<dataset>/ into a `Dataset`, preparing what is missing.

    kg: "freebase" (the dataset's own .kg/.link files: RecBole's KG datasets link items to
    Freebase) or "attributes" (built from the .item file's genre and year columns).
    Every step is vectorised over interactions and triples (tokens as integer codes);
    Python loops run over vocabularies (items, entities) only.
    """
    folder = os.path.join(data_path, dataset)
    if not os.path.isdir(folder):
        if dataset == "ml-100k":
            fetch_ml100k(data_path, log=log)
        else:
            raise DataError(f"{folder}: dataset folder not found (put the RecBole atomic files "
                            f"{dataset}.inter, .kg, .link there)")
    if kg not in ("freebase", "attributes"):
        raise DataError(f"--kg: unknown value {kg!r} (choose freebase or attributes)")
    p = lambda suffix: os.path.join(folder, f"{dataset}.{suffix}")
    used = [p("inter")]
    check_memory(p("inter"), log)

    inter = read_atomic(p("inter"), required=("user_id", "item_id"))
    item_cols = read_atomic(p("item"), required=("item_id",)) if os.path.exists(p("item")) else None

    # --- knowledge graph: triples and item -> entity links
    (heads, rels, tails), (link_items, link_entities), kg_files = load_kg(folder, dataset, kg, item_cols)
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

    # --- interactions: drop the ones whose item has no KG link (as RecBole's KG datasets)
    users_tok, items_tok = inter["user_id"], inter["item_id"]
    n_raw = len(users_tok)
    times = inter["timestamp"] if "timestamp" in inter else np.arange(n_raw, dtype=np.float64)
    keep = np.ones(n_raw, bool)
    if not keep_unlinked:
        keep = np.array([i in item_link for i in items_tok.vocab], dtype=bool)[items_tok.codes]
        if not keep.any():
            raise DataError(f"{p('inter')}: no interaction has an item linked in {p('link')}")
    users, user_codes = renumber(users_tok.codes[keep])
    items, item_codes = renumber(items_tok.codes[keep])
    user_tokens = ["[PAD]"] + [users_tok.vocab[c] for c in user_codes]
    item_tokens = ["[PAD]"] + [items_tok.vocab[c] for c in item_codes]
    seqs, splits = build_sequences(users, items, times[keep], max_len)
    del inter, users_tok, items_tok, keep, users, items, times  # the interactions live on in seqs only
    if len(splits["test"]) == 0:
        raise DataError(f"{p('inter')}: no user has the 3 interactions a train/valid/test split needs")
    if len(splits["valid"]) == 0:
        raise DataError(f"{p('inter')}: no user has the 4 interactions a valid sample needs (early stopping reads it)")
    short = int((seqs.lengths()[1:] < 4).sum())
    if short:
        log(f"warning: {p('inter')}: {short} users have fewer than 4 interactions; as in RecBole, 1 gives no "
            f"sample, 2 a training sample only, 3 a training and a test sample but no valid sample")
    item_entity = np.array([-1] + [item_link.get(t, -1) for t in item_tokens[1:]], dtype=np.int64)

    # --- pretrained KG vectors: the dataset's own, or TransE trained once and cached
    ent_path, rel_path = feature_paths(folder, dataset, kg)
    meta_path = ent_path + ".json"  # written first by TransE below: the vectors are ours, not the user's
    have = [f for f in (ent_path, rel_path) if os.path.exists(f)]
    if len(have) == 1 and not os.path.exists(meta_path):
        missing = rel_path if have == [ent_path] else ent_path
        raise DataError(f"{missing}: not found, but {have[0]} is there and was not written by this project: add the "
                        f"missing file, or remove {have[0]} to have TransE vectors trained for both")
    if len(have) < 2:
        log(f"KG vectors: {ent_path} not found; training TransE on {len(triples)} triples "
            f"({len(entity_tokens)} entities, {len(relation_tokens)} relations, K={kg_embedding_size})")
        entity_kg, relation_kg, hits = transe.train_transe(triples, len(entity_tokens), len(relation_tokens),
                                                           dim=kg_embedding_size, seed=TRANSE_SEED, log=log)
        fmt = lambda v: " ".join(map("{:.6g}".format, v.tolist()))  # Python floats: formatted twice as fast
        meta = {"transe_hits@10": hits, "triples": int(len(triples)), "dim": kg_embedding_size, "seed": TRANSE_SEED}
        write_atomic(meta_path, [json.dumps(meta)], [])
        write_atomic(rel_path, ["rel_id:token", "rel_vec:float_seq"], ([r, fmt(v)] for r, v in zip(relation_tokens, relation_kg)))
        # the entity file last: its presence is what marks the cache as complete
        write_atomic(ent_path, ["ent_id:token", "ent_vec:float_seq"], ([e, fmt(v)] for e, v in zip(entity_tokens, entity_kg)))
        log(f"KG vectors: wrote {ent_path} and {rel_path}; TransE raw tail Hits@10 on a sample of held-out triples = {hits:.4f}")
    # always read the vectors back from the files, so a fresh run and a cached run see the same numbers
    ef = read_atomic(ent_path, required=("ent_id", "ent_vec"))
    rf = read_atomic(rel_path, required=("rel_id", "rel_vec"))
    K, K_rel = ef["ent_vec"].shape[1], rf["rel_vec"].shape[1]
    if K != K_rel:
        raise DataError(f"{ent_path}: entity vectors have length {K}, but relation vectors in {rel_path} have {K_rel}")
    if K != kg_embedding_size:
        raise DataError(f"{ent_path}: the vectors have {K} dimensions, but --kg_embedding_size is {kg_embedding_size}: "
                        f"pass --kg_embedding_size {K}" + (f", or remove {ent_path}, {rel_path} and {meta_path} to train "
                                                           f"new ones" if os.path.exists(meta_path) else ""))
    rel_row = rows_of(rf["rel_id"], relation_tokens)
    if (rel_row < 0).any():
        raise DataError(f"{rel_path}: no vector for relation {relation_tokens[int(np.argmax(rel_row < 0))]!r} of the KG")
    relation_kg = rf["rel_vec"][rel_row]
    ent_row = rows_of(ef["ent_id"], entity_tokens)
    entity_kg = np.where(ent_row[:, None] >= 0, ef["ent_vec"][ent_row], 0).astype(np.float32)  # (E, K)
    del ef
    missing = int((ent_row[np.unique(item_entity[item_entity >= 0])] < 0).sum())
    if missing:
        log(f"warning: {ent_path}: no vector for {missing} linked item entities; their items get a zero KG vector")
    hits = None
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            try:
                hits = json.loads(f.readline()).get("transe_hits@10")
            except (ValueError, AttributeError):  # only a report: a damaged one is not worth stopping for
                log(f"warning: {meta_path}: not the JSON TransE writes; its Hits@10 is not reported")
    item_kg = np.zeros((len(item_tokens), entity_kg.shape[1]), np.float32)
    linked = item_entity >= 0
    item_kg[linked] = entity_kg[item_entity[linked]]

    titles = None
    if item_cols is not None and "movie_title" in item_cols:
        t = dict(zip(item_cols["item_id"], (" ".join(x) for x in item_cols["movie_title"])))
        titles = ["[PAD]"] + [t.get(tok, tok) for tok in item_tokens[1:]]

    ds = Dataset(dataset, kg, user_tokens, item_tokens, seqs, splits["train"], splits["valid"], splits["test"],
                 entity_tokens, relation_tokens, triples, item_entity, item_kg, relation_kg, titles, hits)
    ds.fingerprint = _fingerprint(used, {"kg": kg, "keep_unlinked": keep_unlinked, "max_len": max_len})
    ds.stats = {
        "dataset": dataset, "kg": kg, "users": ds.n_users, "items": ds.n_items, "interactions": len(seqs.items),
        "dropped_unlinked_interactions": n_raw - len(seqs.items), "short_users": short,
        "train_samples": len(ds.train), "valid_samples": len(ds.valid), "test_samples": len(ds.test),
        "entities": len(entity_tokens), "relations": len(relation_tokens), "triples": int(len(triples)),
        "linked_items": int(linked[1:].sum()), "unlinked_items": int((~linked[1:]).sum()),
        "transe_hits@10": hits, "fingerprint": ds.fingerprint,
    }
    return ds


# ----------------------------------------------------------------------------
# 7. Are the links right? Genre agreement between the KG and the item labels

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


# ----------------------------------------------------------------------------

def main(argv=None):
    import train  # the shared options and defaults (train.py imports this module, not the reverse)
    ap = train.option_parser("data.py", "Prepare a RecBole knowledge-aware dataset for KSR and print its statistics.",
                             names=("dataset", "data_path", "kg", "keep_unlinked", "kg_embedding_size", "MAX_ITEM_LIST_LENGTH"))
    ap.add_argument("--check_links", action="store_true", help="also print the KG/label genre agreement")
    ap.add_argument("--json", action="store_true", help="print the statistics as one JSON object on the last line")
    return cli(lambda argv: prepare(ap.parse_args(argv)), sys.argv[1:] if argv is None else list(argv))


def prepare(args):
    args.kg = args.kg or default_kg(args.dataset)
    log = lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)
    ds = load_dataset(args.dataset, args.data_path, args.kg, args.keep_unlinked, args.kg_embedding_size,
                      args.MAX_ITEM_LIST_LENGTH, log=log)
    stats = dict(ds.stats)
    if args.check_links:
        folder = os.path.join(args.data_path, args.dataset)
        item_file = os.path.join(folder, f"{args.dataset}.item")
        item_cols = read_atomic(item_file) if os.path.exists(item_file) else None
        stats["link_check"] = {}
        for kg in ("freebase", "attributes"):
            try:
                triples, links, _ = load_kg(folder, args.dataset, kg, item_cols)
            except DataError:
                continue
            stats["link_check"][kg] = link_check(list(zip(*triples)), list(zip(*links)), item_cols)
    for k, v in stats.items():
        if k != "link_check":
            log(f"{k:>30}: {v}")
    for kg, lc in (stats.get("link_check") or {}).items():
        if lc is None:
            log(f"link check, {kg} KG: needs an .item file with a 'class' column and a KG relation named *genre*")
        else:
            log(f"link check, {kg} KG ({', '.join(lc['relations'])}): items that share a KG genre share a "
                f".item genre label {lc['p_share_label_given_kg']:.3f} of the time, random pairs "
                f"{lc['p_share_label_random']:.3f}: lift {lc['lift']:.2f} (1.0 = the KG's genres say nothing)")
    if args.json:
        print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
