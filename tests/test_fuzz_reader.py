"""The atomic-file reader against hostile bytes (hypothesis).

Small valid .inter, .kg, .link, .ent_feature, .rel_feature and .item files are mutated
(truncated at any byte, bytes inserted or deleted, unicode and control characters, columns
swapped or duplicated, a header's :type changed, very long lines, empty lines, a lone \\r).
For every mutation:
  * read_atomic returns what the line reader (_read_lines, the readable reference) returns
    for the same bytes, or raises a one-line DataError naming the file, and then the line
    reader refuses the bytes too (or finds no rows): both readers accept the same files;
  * load_dataset on the dataset with that file returns a Dataset or raises a one-line
    DataError naming a file of the dataset; never another exception.
500 examples (and the five it found, pinned below), about 5 s on 2 busy cores.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

import data
from conftest import TRANSE, read_line_by_line, write_tiny_dataset

DIM = 4  # the vectors' length: the files are the user's (no .json record), so TransE never runs
FILES = ("inter", "kg", "link", "ent_feature", "rel_feature", "item")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small dataset with its own KG vectors: {suffix: original bytes}, and its root."""
    root = str(tmp_path_factory.mktemp("fuzz"))
    folder = write_tiny_dataset(root, n_users=6, n_items=8, n_relations=2, n_inter=(4, 6))
    rng = np.random.default_rng(0)
    vec = lambda: " ".join(f"{x:.4g}" for x in rng.standard_normal(DIM))
    with open(os.path.join(folder, "tiny.kg")) as f:
        entities = dict.fromkeys(t for line in f.read().splitlines()[1:] for t in line.split("\t")[0::2])
    data.write_atomic(os.path.join(folder, "tiny.ent_feature"), ["ent_id:token", "ent_vec:float_seq"],
                              ([e, vec()] for e in entities))
    data.write_atomic(os.path.join(folder, "tiny.rel_feature"), ["rel_id:token", "rel_vec:float_seq"],
                              ([f"r{a}", vec()] for a in range(2)))
    original = {}
    for suffix in FILES:
        with open(os.path.join(folder, f"tiny.{suffix}"), "rb") as f:
            original[suffix] = f.read()
    return root, original


# ------------------------------------------------------------------ mutations of a file's bytes

NASTY = ["\r", "\n", "\t", "\r\n", "\n\n", "\x00", "\ufeff", " ", "\u2028", "\x85", "\x1c", "\x0b", "\xa0", "\u3000",
         "nan", "inf", "-inf", "1e39", "1e309", "1e-50", "-0", "0x10", "1_0", "\u0661", "+.5", "1e", ".", "", ":", "#",
         '"', "'", "\\", "\t\t", "é"]
TYPES = list(data.ATOMIC_TYPES) + ["", "int", "Token", "float_seq "]
position = st.integers(0, 10 ** 6)  # taken modulo the length: shrinks towards the start
mutation = st.one_of(
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("delete"), position, st.integers(1, 40)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("insert"), position, st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                                                   max_size=6).map(str.encode)),
    st.tuples(st.just("insert"), position, st.sampled_from(NASTY).map(str.encode)),
    st.tuples(st.just("replace_field"), position, st.sampled_from(NASTY + ["x" * 70_000, "y" * 1_100_000])),
    st.tuples(st.just("replace_word"), position, st.sampled_from(NASTY)),  # one number of a vector, say
    st.tuples(st.just("swap_columns"), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.just("duplicate_column"), st.integers(0, 4)),
    st.tuples(st.just("retype"), st.integers(0, 4), st.sampled_from(TYPES)),
    st.tuples(st.just("long_line"), position, st.sampled_from([70_000, 1_100_000])),  # arrow's blocks are 1 MiB
    st.tuples(st.just("insert_line"), position, st.sampled_from(["", "\r", " ", "\t", "\t\t\t"])),
)


def mutate(raw, edits):
    for kind, *a in edits:
        if kind == "truncate":
            raw = raw[:a[0] % (len(raw) + 1)]
        elif kind == "delete":
            at = a[0] % (len(raw) + 1)
            raw = raw[:at] + raw[at + a[1]:]
        elif kind == "insert":
            at = a[0] % (len(raw) + 1)
            raw = raw[:at] + a[1] + raw[at:]
        else:  # edits of lines and columns: on the text (the original files are UTF-8; undecodable bytes kept)
            lines = raw.decode("utf-8", "surrogateescape").split("\n")
            if kind in ("swap_columns", "duplicate_column", "retype"):
                for k, line in enumerate(lines):
                    cols = line.split("\t")
                    i = a[0] % len(cols)
                    if kind == "swap_columns":
                        j = a[1] % len(cols)
                        cols[i], cols[j] = cols[j], cols[i]
                    elif kind == "duplicate_column":
                        cols.insert(i, cols[i])
                    elif k == 0:  # retype: the header only
                        cols[i] = cols[i].partition(":")[0] + ":" + a[1]
                    lines[k] = "\t".join(cols)
            elif kind in ("replace_field", "replace_word"):  # in a data row (a token of 1 MiB is a valid token)
                k = 1 + a[0] % max(1, len(lines) - 1)
                if k < len(lines):
                    cols = lines[k].split("\t")
                    c = a[0] % len(cols)
                    words = cols[c].split(" ")
                    words[a[0] // 7 % len(words)] = a[1]
                    cols[c] = a[1] if kind == "replace_field" else " ".join(words)
                    lines[k] = "\t".join(cols)
            else:  # a very long line, or an empty / blank one
                lines.insert(a[0] % (len(lines) + 1), "z" * a[1] if kind == "long_line" else a[1])
            raw = "\n".join(lines).encode("utf-8", "surrogateescape")
    return raw


# ------------------------------------------------------------------ the property

def same_columns(fast, slow):
    assert fast.keys() == slow.keys()
    for name, want in slow.items():
        got = fast[name]
        if isinstance(want, data.Tokens):
            assert isinstance(got, data.Tokens) and got.vocab == want.vocab, name
            assert np.array_equal(got.codes, want.codes), name
        elif isinstance(want, list):  # token_seq
            assert got == want, name
        else:
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), name


def one_line_naming(error, *paths):
    msg = str(error)
    assert len(msg.splitlines()) == 1 and "\r" not in msg, repr(msg)  # what cli() prints is one line
    assert any(p in msg for p in paths), msg


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's warning would be a second line on stderr
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# what it found, kept as examples that run every time:
@example(suffix="inter", edits=[("retype", 3, "token")])  # timestamp:token: a TypeError in the time sort
@example(suffix="kg", edits=[("retype", 1, "token_seq")])  # relation_id:token_seq: an AttributeError
@example(suffix="inter", edits=[("replace_field", 0, "\r")])  # a lone \r: arrow ends the line there, the line reader did not
@example(suffix="ent_feature", edits=[("insert", 34, b"\x00")])  # a word arrow's cast refuses: ArrowInvalid escaped
@example(suffix="ent_feature", edits=[("replace_word", 7, "1e39")])  # finite in float64, inf in float32: arrow kept it
@given(suffix=st.sampled_from(FILES), edits=st.lists(mutation, min_size=1, max_size=3))
def test_a_mutated_file_reads_as_the_line_reader_reads_it_or_is_one_line(dataset, suffix, edits):
    root, original = dataset
    folder = os.path.join(root, "tiny")
    path = os.path.join(folder, f"tiny.{suffix}")
    with open(path, "wb") as f:
        f.write(mutate(original[suffix], edits))
    try:
        try:  # the reference: the header, then the line reader
            names, slow = read_line_by_line(path)
        except data.DataError as e:
            one_line_naming(e, path)
            slow = None
        try:
            fast = data.read_atomic(path)
        except data.DataError as e:
            one_line_naming(e, path)
            assert slow is None or len(slow[names[0]]) == 0, f"read_atomic refused what the line reader reads: {e}"
            event("read_atomic: refused at the header" if ": line 1:" in str(e) else "read_atomic: refused")  # the statistics
        else:
            event("read_atomic: read")
            assert slow is not None, "read_atomic read what the line reader refuses"
            same_columns(fast, slow)
        try:
            ds = data.load_dataset("tiny", root, "files", False, DIM, 50, TRANSE, log=lambda m: None)
        except data.DataError as e:
            one_line_naming(e, folder)
            event("load_dataset: refused")
        else:
            event("load_dataset: loaded")
            assert len(ds.test) > 0 and ds.item_kg.shape[1] == DIM and np.isfinite(ds.item_kg).all()
    finally:
        with open(path, "wb") as f:
            f.write(original[suffix])
