"""The slow reader of RecBole's atomic files: line by line in Python. data.read_atomic calls it
only for a file that pyarrow refuses (or where pyarrow is not installed): it reads what arrow would
not, and otherwise names the first bad line. Both accept the same files (tests/test_fuzz_reader.py).
"""
import re

import numpy as np

from options import DataError

LINE_END = re.compile("\r\n|\r|\n")  # what pyarrow's CSV reader (and pandas', RecBole's) ends a line at


def read_lines(path, names, types):
    """The same file, line by line in Python: slow, but it names the line that is wrong. Token columns
    come back as lists of strings (data.read_atomic encodes them)."""
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
        if typ == "float":
            cols[name] = np.array(cols[name], dtype=np.float64)
        elif typ == "float_seq":
            cols[name] = np.array(cols[name], dtype=np.float32).reshape(len(cols[name]), vec_len.get(name, 0))
    return cols

