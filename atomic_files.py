"""RecBole's atomic files: a tab-separated table whose header names each column as name:type.

    read_atomic    one file into {column: values}; token columns as integer codes (Tokens),
                   parsed by pyarrow where it is installed, else (and to name a bad line) by lines
    write_atomic   one file, whole or not at all (files.replacing)
    remap          tokens -> ids from 1 in order of first appearance (0 is padding); renumber
                   the same for integer codes; rows_of, where tokens are in a Tokens column

Bad input is a DataError whose one line names the file and the line.
"""
import os
import re

import numpy as np

import files
from cli import DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
LINE_END = re.compile("\r\n|\r|\n")  # what pyarrow's CSV reader (and pandas', RecBole's) ends a line at


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


def read_atomic(path, required=(), types=None):
    """Read a RecBole atomic file into {column name: values}.

    token -> Tokens, token_seq -> list[list[str]], float -> float64 array (n,),
    float_seq -> float32 array (n, d). `required` names columns that must be present;
    `types` ({column: type}) the type a column must have where it is present (RecBole lets
    a header declare any type: a `timestamp:token` would sort by order of appearance).
    Bad input (not UTF-8, a repeated column, a value that does not parse, NaN or inf in a
    float, vectors of different lengths) is a DataError naming file and line. Lines end
    at \n, \r\n or a lone \r, as for pyarrow and pandas (RecBole's reader).

    pyarrow's CSV reader parses the file in C++ on every core (20M lines in seconds, no
    Python object per value). A file it refuses, or whose values fail our checks, is read
    again line by line by _read_lines, which names the first bad line (or reads what arrow
    would not: both accept the same files).
    """
    names, types = _read_header(path, required, types)
    try:
        cols = _read_arrow(path, names, types)
    except _Refused:
        cols = _read_lines(path, names, types)
    if not len(cols[names[0]]):
        raise DataError(f"{path}: file has a header but no rows")
    return cols


class _Refused(Exception):
    """The fast reader's values fail a check: _read_lines finds the line."""


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


def _read_lines(path, names, types):
    """The same file, line by line in Python: slow, but it names the line that is wrong."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:  # an I/O error after the header was read (arrow's own is a refusal, read again here)
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = len(LINE_END.findall(raw[:e.start].decode("utf-8"))) + 1  # the bytes before the first bad one decode
        raise DataError(f"{path}: line {line}: byte {e.start} (0x{raw[e.start]:02x}) is not UTF-8") from None
    lines = LINE_END.split(text) if "\r" in text else text.split("\n")  # \r is rare: the fast split without it
    cols = {n: [] for n in names}
    vec_len = {}
    for lineno, line in enumerate(lines[1:], start=2):
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
                    with np.errstate(over="ignore"):  # a float32 overflow is the "not finite" line below, not a warning
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


def write_atomic(path, header, rows):
    """Write an atomic file (a header of name:type columns, then tab-separated rows)."""
    with files.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


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


def rows_of(tokens, wanted):
    """The row of each wanted token in a Tokens column (a later row wins), -1 where absent."""
    last = np.full(len(tokens.vocab), -1, np.int64)
    codes, first_from_end = np.unique(tokens.codes[::-1], return_index=True)
    last[codes] = len(tokens) - 1 - first_from_end
    index = {tok: last[c] for c, tok in enumerate(tokens.vocab)}
    return np.array([index.get(t, -1) for t in wanted], dtype=np.int64)
