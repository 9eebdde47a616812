"""Synthetic knowledge-aware datasets with planted structure, from ML-1M to ML-20M sizes.

    python -m extras.synthetic --name syn-1m --size 1m [--seed 0] [--data_path dataset] [--overwrite] [--share]

writes RecBole atomic files into <data_path>/<name>/, the files data.load_dataset reads with
--kg freebase: <name>.inter (user_id, item_id, rating, timestamp), <name>.item (item_id,
class: the item's genres), <name>.kg (head_id, relation_id, tail_id) and <name>.link
(item_id -> entity_id). Sizes (--size, or --users/--items/--interactions/--triples):

    tiny    200 users     500 items       6,000 interactions      8,000 triples  (the tests)
    1m    6,040 users   3,706 items   1,000,209 interactions     60,000 triples  (ML-1M's counts)
    5m   35,000 users  10,000 items   5,000,000 interactions    250,000 triples
    20m 138,493 users  26,744 items  20,000,263 interactions  1,000,000 triples  (ML-20M's counts)

The interaction and triple counts are exact. Why a synthetic dataset: a benchmark at ML-20M's
size, and a figure, need a dataset whose KG is known to matter (and known not to, for some
relations); RecBole's real ones cannot say which of their relations carry a signal.

The planted structure (the constants below set every number):
  * Items have values of six relations. Four are PLANTED: they drive what users do:
    genre (20 values, 1-3 per item), director (items/8 values, 1 per item), actor (items/3
    values, 2-4 per item), year (80 values 1921-2000, 1 per item). Two are NOISE: country
    (50 values, 1 per item) and language (30 values, 1-2 per item) are drawn independently
    of everything users do. Values are skewed (value 1 the most common; newer years more).
  * Every user prefers a few values of each planted relation (PREFERRED: 2 genres, 3
    directors, 4 actors, 2 years), values of popularity-drawn items.
  * A user's next item: with P_RECENT it shares a planted value with one of the last
    RECENT_WINDOW items (pick one of them, a planted relation, one of its values, then an
    item with that value); with P_PREFERRED it has one of the user's preferred values;
    otherwise it is a popular item (zipf, exponent ITEM_POP_ALPHA, over shuffled item ranks).
    "An item with value v" is drawn by popularity among v's items. No item repeats within a
    user (as in MovieLens): a repeated draw is redrawn, after REDRAWS tries from popularity,
    and at the last uniformly among unseen items.
  * Non-item triples fill the KG up to --triples: co_star (actor -> actor, two actors of the
    same item: structure among non-item entities) and then knows (actor -> actor, random
    pairs: noise). So the KG has 8 relations; only the item relations are KSR's attributes.
  * Sequence lengths: lognormal (LENGTH_SIGMA), scaled to the exact total, at least
    MIN_LENGTH and at most min(USER_CAP_FRACTION * items, USER_CAP). Timestamps: integer
    seconds from BASE_TIME, non-decreasing per user (sessions, a few ties); ratings 1-5
    drawn independently (RATING_P). Tokens: users and items "1".."N"; entities carry their
    kind, "item:17", "genre:3", "director:55", "year:1995"; the class column holds the genre
    numbers, so --kg attributes reads the same genre entities.

planted_share() measures the structure from the written files: how often consecutive
interactions of a user share a value of each relation, against random pairs of interactions.
At 1m (seed 0) consecutive items share a director 20x as often as random pairs, an actor
6x, a year 3.7x, a genre 1.2x (20 genres: random pairs share one a quarter of the time); a
country or a language 1.00x.

Speed: no loop over interactions. Users are sorted by length and generated in chunks; within
a chunk step t draws the t-th item of every user still active (a prefix of the chunk) with
numpy, and a chunk's users x items bitmap says what each has seen. Files are formatted with
numpy (digits of whole columns at once) in blocks of WRITE_ROWS rows.

Reading order: PRESETS and the constants, build_kg, user_lengths, sequences, generate,
planted_share, main.
"""
import glob
import os
import sys
import time

import numpy as np

import data
from data import replacing
from options import Parser, UsageError, cli, number, positive

PRESETS = {
    "tiny": dict(users=200, items=500, interactions=6_000, triples=8_000),
    "1m": dict(users=6_040, items=3_706, interactions=1_000_209, triples=60_000),
    "5m": dict(users=35_000, items=10_000, interactions=5_000_000, triples=250_000),
    "20m": dict(users=138_493, items=26_744, interactions=20_000_263, triples=1_000_000),
}

# Item relations: name -> (number of values: an int, or a fraction of the items; values per item lo..hi;
# skew: value k (from 1) has weight k ** -skew). PLANTED ones drive the sequences, NOISE ones do not.
PLANTED = {"genre": (20, 1, 3, 0.6), "director": (1 / 8, 1, 1, 0.5), "actor": (1 / 3, 2, 4, 0.5), "year": (80, 1, 1, 0.7)}
NOISE = {"country": (50, 1, 1, 1.0), "language": (30, 1, 2, 1.2)}
YEAR_LAST = 2000             # year value k is the year YEAR_LAST + 1 - k: newer years are more common
PREFERRED = {"genre": 2, "director": 3, "actor": 4, "year": 2}  # preferred values per user and relation

P_RECENT = 0.5               # next item shares a planted value with one of the last RECENT_WINDOW items
P_PREFERRED = 0.3            # next item has one of the user's preferred values; otherwise a popular item
RECENT_LAG_P = (0.6, 0.25, 0.15)  # which of the last RECENT_WINDOW = 3 items: the previous one most often
RECENT_WINDOW = len(RECENT_LAG_P)
ITEM_POP_ALPHA = 0.8         # item popularity ~ rank ** -alpha (ranks shuffled: unrelated to item ids)
REDRAWS, POP_REDRAWS, UNIFORM_REDRAWS = 4, 8, 32  # tries per step for an unseen item: the mechanism, popular, uniform

MIN_LENGTH = 5               # interactions per user, at least
LENGTH_SIGMA = 1.0           # lognormal sigma of the lengths (ML-1M: median 96, mean 165: sigma ~1)
USER_CAP_FRACTION, USER_CAP = 0.25, 3000  # at most this share of the items, and this many, per user

BASE_TIME = 978_300_760      # ML-1M's first timestamp
START_SPAN = 3 * 365 * 86400  # a user's first interaction: uniform in this many seconds after BASE_TIME
P_TIE, P_NEW_SESSION = 0.05, 0.1  # gap 0 (a tie); else a gap between sessions, or within one
SESSION_GAP, IN_SESSION_GAP = 5 * 86400, 120  # mean gaps in seconds (exponential)
RATING_P = (0.06, 0.11, 0.26, 0.35, 0.22)  # ratings 1..5, about ML-1M's shares, independent of everything

CHUNK_CELLS = 1 << 27        # users x items cells of one chunk's seen-bitmap (128 MiB)
WRITE_ROWS = 1 << 20         # rows formatted at once

HEADERS = {
    "inter": ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
    "item": ["item_id:token", "class:token_seq"],
    "kg": ["head_id:token", "relation_id:token", "tail_id:token"],
    "link": ["item_id:token", "entity_id:token"],
}


# ----------------------------------------------------------------------------
# Sizes

def resolve_sizes(size="1m", users=None, items=None, interactions=None, triples=None):
    """The preset's counts with the given ones in place; a UsageError if they cannot be met."""
    if size not in PRESETS:
        raise UsageError(f"--size: unknown preset {size!r} (choose {', '.join(PRESETS)})")
    given = dict(users=users, items=items, interactions=interactions, triples=triples)
    sizes = {k: int(v if v is not None else PRESETS[size][k]) for k, v in given.items()}
    for k, v in sizes.items():
        if v < 1:
            raise UsageError(f"--{k}: must be positive, got {v}")
    if sizes["items"] < 4 * MIN_LENGTH:
        raise UsageError(f"--items: at least {4 * MIN_LENGTH} (a user's {MIN_LENGTH} items are at most a quarter of them)")
    cap = user_cap(sizes["items"])
    lo, hi = MIN_LENGTH * sizes["users"], cap * sizes["users"]
    if not lo <= sizes["interactions"] <= hi:
        raise UsageError(f"--interactions: {sizes['users']} users need {lo:,}..{hi:,} interactions ({MIN_LENGTH} to "
                         f"{cap} each with {sizes['items']} items), got {sizes['interactions']:,}")
    return sizes


def user_cap(n_items):
    """The longest sequence. At most a quarter of the items: a uniform redraw then finds an
    unseen item at least 3 times in 4, so the loop over redraws ends fast."""
    return max(MIN_LENGTH, min(int(USER_CAP_FRACTION * n_items), USER_CAP))


# ----------------------------------------------------------------------------
# The knowledge graph

def n_values(spec, n_items):
    n, _, _, _ = spec
    return n if isinstance(n, int) else max(2, int(round(n * n_items)))


def item_values(rng, n_items, spec):
    """(n_items, hi) values 0..n-1 of one relation per item, distinct within an item, -1 padded."""
    n, lo, hi, skew = n_values(spec, n_items), spec[1], spec[2], spec[3]
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -skew)
    draw = lambda size: np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), n - 1)
    k = rng.integers(lo, hi + 1, n_items)
    M = np.full((n_items, hi), -1, np.int64)
    M[:, 0] = draw(n_items)
    for c in range(1, hi):
        want = np.flatnonzero(k > c)
        for _ in range(20):  # redraw a value the item already has; a few rare leftovers keep fewer values
            v = draw(len(want))
            ok = ~np.any(M[want, :c] == v[:, None], axis=1)
            M[want[ok], c] = v[ok]
            want = want[~ok]
            if not len(want):
                break
    # leftovers leave a hole: move the -1s to the end of the row
    order = np.argsort(M < 0, axis=1, kind="stable")
    return np.take_along_axis(M, order, axis=1)


def value_token(name, v):
    """Value ids 0.. -> the number in the entity token (genre:1.., year:2000..)."""
    return YEAR_LAST - v if name == "year" else v + 1


def build_kg(rng, n_items, n_triples):
    """Item values of every relation, and the triples as blocks (relation, head kind, heads,
    tail kind, tails) of numbers for the tokens "<kind>:<number>"; exactly n_triples of them."""
    values = {name: item_values(rng, n_items, spec) for name, spec in {**PLANTED, **NOISE}.items()}
    blocks = []
    for name, M in values.items():
        item, col = np.nonzero(M >= 0)  # row-major: item by item
        blocks.append((name, "item", item + 1, name, value_token(name, M[item, col])))
    n_item_triples = sum(len(b[2]) for b in blocks)
    filler = n_triples - n_item_triples
    if filler < 0:
        raise UsageError(f"--triples: the {n_items} items alone have {n_item_triples:,} triples (seed-dependent); "
                         f"ask for at least that many, got {n_triples:,}")
    n_actors = n_values(PLANTED["actor"], n_items)
    A = values["actor"]
    # co_star: two actors of the same item (one triple per pair, lower id first)
    pairs = [A[:, [p, q]] for p in range(A.shape[1]) for q in range(p + 1, A.shape[1])]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    pairs = np.sort(pairs[(pairs >= 0).all(axis=1)], axis=1)
    co = np.unique(pairs[:, 0] * n_actors + pairs[:, 1])
    if len(co) > filler:
        co = np.sort(rng.choice(co, filler, replace=False))
    blocks.append(("co_star", "actor", co // n_actors + 1, "actor", co % n_actors + 1))
    # knows: random ordered pairs of distinct actors, noise
    need = filler - len(co)
    if need > n_actors * (n_actors - 1):
        raise UsageError(f"--triples: {n_triples:,} is more than these {n_items} items' KG can hold; ask for fewer")
    knows = np.zeros(0, np.int64)
    while len(knows) < need:
        a, b = rng.integers(n_actors, size=(2, 2 * (need - len(knows)) + 16))
        knows = np.unique(np.concatenate([knows, (a * n_actors + b)[a != b]]))
    knows = np.sort(rng.choice(knows, need, replace=False)) if len(knows) > need else knows
    blocks.append(("knows", "actor", knows // n_actors + 1, "actor", knows % n_actors + 1))
    return values, blocks


class ValueIndex:
    """The planted values of every item, and a popularity-weighted draw of an item with a value.

    Values of the planted relations get one global id each (relation r's values follow
    relation r-1's). V[i, r, :cnt[i, r]] are item i's value ids in relation r. The items of
    value g are members[start[g]:end[g]]; cw is the running sum of their popularity, so a
    uniform number in value g's stretch of cw picks one of them by popularity.
    """

    def __init__(self, values, pop):
        mats = [values[name] for name in PLANTED]
        n_items, K = len(pop), max(M.shape[1] for M in mats)
        self.R = len(mats)
        self.V = np.full((n_items, self.R, K), -1, np.int64)
        offset = 0
        for r, M in enumerate(mats):
            self.V[:, r, :M.shape[1]] = np.where(M >= 0, M + offset, -1)
            offset += int(M.max()) + 1
        self.cnt = (self.V >= 0).sum(axis=2)
        item, r, c = np.nonzero(self.V >= 0)
        g = self.V[item, r, c]
        order = np.argsort(g, kind="stable")
        self.members = item[order]
        self.start = np.searchsorted(g[order], np.arange(offset), side="left")
        self.end = np.searchsorted(g[order], np.arange(offset), side="right")
        self.cw = np.cumsum(pop[self.members])
        cw0 = np.concatenate([[0.0], self.cw])
        self.lo, self.hi = cw0[self.start], cw0[self.end]

    def item_with(self, g, u):
        """A popularity-weighted item with value g, for arrays of value ids g and uniforms u."""
        k = np.searchsorted(self.cw, self.lo[g] + u * (self.hi[g] - self.lo[g]), side="right")
        return self.members[np.clip(k, self.start[g], self.end[g] - 1)]

    def value_of(self, items, r, u):
        """One of each item's values in relation r (arrays), uniformly."""
        return self.V[items, r, (u * self.cnt[items, r]).astype(np.int64)]


# ----------------------------------------------------------------------------
# Users: lengths, sequences, times

def user_lengths(rng, n_users, total, cap):
    """Long-tailed lengths in MIN_LENGTH..cap summing to exactly `total`: lognormal draws,
    scaled (bisection on the scale) and rounded, the remainder to the largest fractions."""
    x = rng.lognormal(0.0, LENGTH_SIGMA, n_users)
    real = lambda s: np.clip(MIN_LENGTH + s * x, MIN_LENGTH, cap)
    lo, hi = 0.0, cap / x.min()
    for _ in range(100):  # keep sum(real(lo)) <= total
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if real(mid).sum() <= total else (lo, mid)
    r = real(lo)
    L = np.floor(r).astype(np.int64)
    while L.sum() < total:
        eligible = np.flatnonzero(L < cap)
        pick = eligible[np.argsort(-(r - L)[eligible], kind="stable")[:total - L.sum()]]
        L[pick] += 1
    return L


def sequences(rng, L, index, pop, counts):
    """Item ids (0-based) of every user's sequence, in user order, for lengths L (user order).

    Users sorted by length go in chunks whose seen-bitmap fits CHUNK_CELLS; in a chunk, step
    t draws item t of the users still active, a prefix of the chunk (lengths descending).
    counts collects how many items each mechanism gave (planted_share measures the result).
    """
    n_items = len(pop)
    pop_cw = np.cumsum(pop)
    offs = np.concatenate([[0], np.cumsum(L)[:-1]])
    out = np.empty(int(L.sum()), np.int32)
    order = np.argsort(-L, kind="stable")
    per_chunk = max(1, CHUNK_CELLS // n_items)
    n_pref = np.array([PREFERRED[name] for name in PLANTED])
    pref_off = np.concatenate([[0], np.cumsum(n_pref)[:-1]])
    lag_cdf = np.cumsum(RECENT_LAG_P)[:-1] / sum(RECENT_LAG_P)
    mech_cdf = np.array([P_RECENT, P_RECENT + P_PREFERRED])
    popular = lambda n: np.minimum(np.searchsorted(pop_cw, rng.random(n) * pop_cw[-1], side="right"), n_items - 1)
    for a in range(0, len(order), per_chunk):
        users = order[a:a + per_chunk]
        Lc = L[users]
        U, T = len(users), int(Lc[0])
        # preferred values: for each relation, values of popularity-drawn items
        prefs = np.concatenate([index.value_of(popular(U * k).reshape(U, k), r, rng.random((U, k)))
                                for r, k in enumerate(n_pref)], axis=1)
        seq = np.zeros((T, U), np.int64)  # step-major: step t's items are one contiguous row
        seen = np.zeros((U, n_items), bool)
        active = np.searchsorted(-Lc, -np.arange(T), side="left")  # users with length > t
        for t in range(T):
            n = int(active[t])
            mech = np.searchsorted(mech_cdf, rng.random(n), side="right")  # 0 recent, 1 preferred, 2 popular
            if t == 0:
                mech[mech == 0] = 1  # nothing recent yet: a preferred value
            got = np.full(n, -1, np.int64)
            todo = np.arange(n)
            for attempt in range(REDRAWS + POP_REDRAWS + UNIFORM_REDRAWS):
                if attempt < REDRAWS:
                    m = mech[todo]
                    cand = np.empty(len(todo), np.int64)
                    rec, pre, pop_ = todo[m == 0], todo[m == 1], m == 2
                    if len(rec):  # a planted value of one of the last RECENT_WINDOW items
                        lag = np.minimum(1 + np.searchsorted(lag_cdf, rng.random(len(rec)), side="right"), t)
                        r = rng.integers(index.R, size=len(rec))
                        g = index.value_of(seq[t - lag, rec], r, rng.random(len(rec)))
                        cand[m == 0] = index.item_with(g, rng.random(len(rec)))
                    if len(pre):  # one of the user's preferred values
                        r = rng.integers(index.R, size=len(pre))
                        col = pref_off[r] + (rng.random(len(pre)) * n_pref[r]).astype(np.int64)
                        cand[m == 1] = index.item_with(prefs[pre, col], rng.random(len(pre)))
                    cand[pop_] = popular(int(pop_.sum()))
                    stage = m
                elif attempt < REDRAWS + POP_REDRAWS:
                    cand, stage = popular(len(todo)), 3
                else:
                    cand, stage = rng.integers(n_items, size=len(todo)), 4
                ok = ~seen[todo, cand]
                done = todo[ok]
                got[done] = cand[ok]
                seen[done, cand[ok]] = True
                if attempt < REDRAWS:
                    counts[:3] += np.bincount(stage[ok], minlength=3)
                else:
                    counts[stage] += int(ok.sum())
                todo = todo[~ok]
                if not len(todo):
                    break
            for u in todo:  # practically never: the uniform tries all hit seen items
                got[u] = rng.choice(np.flatnonzero(~seen[u]))
                seen[u, got[u]] = True
                counts[4] += 1
            seq[t, :n] = got
        flat = seq.T[np.arange(T)[None, :] < Lc[:, None]]  # row by row: each user's items in order
        first = np.concatenate([[0], np.cumsum(Lc)[:-1]])
        out[np.repeat(offs[users] - first, Lc) + np.arange(len(flat))] = flat
    return out


def timestamps(rng, L):
    """Non-decreasing integer seconds per user: a start, then gaps within and between sessions."""
    n = int(L.sum())
    new_session = rng.random(n) < P_NEW_SESSION
    gap = np.ceil(rng.exponential(1.0, n) * np.where(new_session, SESSION_GAP, IN_SESSION_GAP)).astype(np.int64)
    gap[rng.random(n) < P_TIE] = 0
    offs = np.concatenate([[0], np.cumsum(L)[:-1]])
    gap[offs] = rng.integers(START_SPAN, size=len(L))
    cs = np.cumsum(gap)
    return BASE_TIME + cs - np.repeat(cs[offs] - gap[offs], L)


# ----------------------------------------------------------------------------
# Writing

# Five decimal digits of 0..99999 in three spellings: zero-padded ("00042"), blank-padded with NUL
# bytes that format_rows deletes afterwards ("\0\0\042", 0 all NUL), and the same with 0 as "0".
_D = (np.arange(100_000)[:, None] // 10 ** np.arange(4, -1, -1) % 10 + 48).astype(np.uint8)
_LEAD = np.arange(100_000)[:, None] < 10 ** np.arange(4, -1, -1)  # leading zeros
DIGITS5 = np.concatenate([_D, np.where(_LEAD, 0, _D), np.where(_LEAD, 0, _D)]).astype(np.uint8)
DIGITS5[2 * 100_000] = [0, 0, 0, 0, 48]


def format_rows(fields):
    """Rows of text from whole columns at once. fields: (prefix bytes, int array or None) in
    row order; a value is written in decimal after its prefix; a negative value leaves out
    both (an absent value), None writes the prefix alone (the line end).

    Every row is laid out at a fixed width, the numbers right-aligned in 5-digit groups from
    the DIGITS5 table, with NUL bytes for leading zeros and absent values; bytes.translate
    then deletes the NULs in one pass (no integer division per digit, no boolean indexing).
    """
    n = next(len(v) for _, v in fields if v is not None)
    vals = [None if v is None else np.asarray(v, np.int64) for _, v in fields]
    groups = [0 if v is None else -(-len(str(int(v.max()) if n else 0)) // 5) for v in vals]
    out = np.empty((n, sum(len(p) + 5 * g for (p, _), g in zip(fields, groups))), np.uint8)
    c = 0
    for (prefix, _), v, G in zip(fields, vals, groups):
        out[:, c:c + len(prefix)] = np.frombuffer(prefix, np.uint8)
        c += len(prefix)
        if v is None:
            continue
        absent = v < 0
        rest = np.maximum(v, 0)
        for g in range(G):  # the least significant group first, right to left
            rest, part = np.divmod(rest, 100_000)
            part += (rest == 0) * (200_000 if g == 0 else 100_000)  # no digits above: blank its leading zeros
            out[:, c + 5 * (G - 1 - g):c + 5 * (G - g)] = np.take(DIGITS5, part, axis=0)
        if absent.any():
            out[absent, c - len(prefix):c + 5 * G] = 0
        c += 5 * G
    return out.tobytes().translate(None, b"\0")


def write_file(path, header, blocks):
    """An atomic file from blocks of fields (format_rows), WRITE_ROWS rows at a time, written
    whole or not at all (data.replacing)."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(("\t".join(header) + "\n").encode())
        for fields in blocks:
            n = next(len(v) for _, v in fields if v is not None)
            for lo in range(0, n, WRITE_ROWS):
                f.write(format_rows([(p, v if v is None else v[lo:lo + WRITE_ROWS]) for p, v in fields]))


def count_entities(blocks):
    """Distinct entity tokens of the triple blocks (build_kg)."""
    kinds = {}
    for _, hk, h, tk, t in blocks:
        kinds.setdefault(hk, []).append(h)
        kinds.setdefault(tk, []).append(t)
    return sum(len(np.unique(np.concatenate(v))) for v in kinds.values())


def dataset_files(folder, name):
    return {kind: os.path.join(folder, f"{name}.{kind}") for kind in HEADERS}


def derived_files(folder, name):
    """What data.load_dataset caches beside a dataset (TransE vectors): stale once it changes."""
    out = []
    for kg in ("files", "attributes"):
        ent, rel = data.feature_paths(folder, name, kg)
        out += [ent, rel, ent + ".json"]
        # and those of other TransE settings (data.kg_vectors: <stem>.transe-<settings>.ent_feature, ...)
        out += sorted(glob.glob(glob.escape(ent[:-len(".ent_feature")]) + ".transe-*_feature*"))
    return out


# ----------------------------------------------------------------------------
# The whole dataset

def generate(name, data_path="dataset", size="1m", seed=0, overwrite=False, log=print, **overrides):
    """Write the dataset <data_path>/<name>/ and return a summary (a dict).

    overrides: users, items, interactions, triples (ints) in place of the preset's. A folder
    that holds the dataset already is refused (UsageError) unless overwrite; then its old
    files and the TransE vectors data.load_dataset cached for it go before the new ones are
    written. Deterministic for a seed: the KG, the lengths, the sequences and the times come
    from four independent streams of it.
    """
    unknown = set(overrides) - {"users", "items", "interactions", "triples"}
    if unknown:
        raise TypeError(f"generate(): unknown size overrides {sorted(unknown)}")
    sizes = resolve_sizes(size, **overrides)
    if not name or os.sep in name or name in (".", ".."):
        raise UsageError(f"--name: not a folder name: {name!r}")
    t0 = time.time()
    folder = os.path.join(data_path, name)
    files = dataset_files(folder, name)
    held = [p for p in files.values() if os.path.exists(p)]
    if held and not overwrite:
        raise UsageError(f"{folder}: holds the dataset {name} already ({', '.join(map(os.path.basename, held))}); "
                         f"choose another --name or --data_path, or pass --overwrite to replace it")
    kg_rng, len_rng, seq_rng, time_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    n_users, n_items = sizes["users"], sizes["items"]

    values, blocks = build_kg(kg_rng, n_items, sizes["triples"])  # fast, and it may refuse --triples
    try:
        os.makedirs(folder, exist_ok=True)  # before the long part: a folder we cannot write fails now
    except OSError as e:
        raise data.DataError(f"{folder}: cannot make the dataset folder ({e.strerror or e})") from None
    pop = np.arange(1, n_items + 1, dtype=np.float64)[kg_rng.permutation(n_items)] ** -ITEM_POP_ALPHA
    index = ValueIndex(values, pop)
    L = user_lengths(len_rng, n_users, sizes["interactions"], user_cap(n_items))
    counts = np.zeros(5, np.int64)
    items = sequences(seq_rng, L, index, pop, counts)
    times = timestamps(time_rng, L)
    ratings = (time_rng.choice(5, size=len(items), p=RATING_P) + 1).astype(np.int8)
    t_gen = time.time() - t0

    for p in derived_files(folder, name) + held:  # old vectors and files first: never old and new side by side
        if os.path.exists(p):
            os.remove(p)
    item_ids = np.arange(1, n_items + 1)
    G = values["genre"] + 1
    G[values["genre"] < 0] = -1
    write_file(files["kg"], HEADERS["kg"], [[(f"{hk}:".encode(), h), (f"\t{rel}\t{tk}:".encode(), t), (b"\n", None)]
                                            for rel, hk, h, tk, t in blocks])
    write_file(files["link"], HEADERS["link"], [[(b"", item_ids), (b"\titem:", item_ids), (b"\n", None)]])
    write_file(files["item"], HEADERS["item"], [[(b"", item_ids), (b"\t", G[:, 0])] +
                                                [(b" ", G[:, c]) for c in range(1, G.shape[1])] + [(b"\n", None)]])
    users = np.repeat(np.arange(1, n_users + 1), L)
    # the interactions last: without them data.load_dataset refuses the folder, so a failed run is never read
    write_file(files["inter"], HEADERS["inter"], [[(b"", users), (b"\t", items.astype(np.int64) + 1),
                                                   (b"\t", ratings), (b"\t", times), (b"\n", None)]])

    by_rel = {rel: int(len(h)) for rel, _, h, _, _ in blocks}
    steps = counts.sum()
    summary = {
        "name": name, "folder": folder, "seed": seed, "size": size, **sizes,
        "triples_by_relation": by_rel, "planted": list(PLANTED), "noise": list(NOISE),
        "entities": count_entities(blocks),
        "length_min": int(L.min()), "length_median": float(np.median(L)), "length_max": int(L.max()),
        "items_from": {k: round(float(c / steps), 4) for k, c in
                       zip(("recent", "preferred", "popular", "popular_redraw", "uniform_redraw"), counts)},
        "seconds_generate": round(t_gen, 2), "seconds": round(time.time() - t0, 2),
    }
    log(f"{name}: {n_users:,} users, {n_items:,} items, {len(items):,} interactions, {sizes['triples']:,} triples "
        f"({summary['entities']:,} entities, {len(by_rel)} relations) in {folder}/ ({summary['seconds']}s)")
    return summary


# ----------------------------------------------------------------------------
# Is the structure there? Measured from the files

def read_int_table(path):
    """A data file whose fields are all non-negative integers (as generate writes .inter) into
    an (rows, columns) int64 array and its column names, fast (numpy parses the text)."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8").rstrip("\n").split("\t")
        body = f.read()
    names = [c.partition(":")[0] for c in header]
    rows = body.count(b"\n")
    a = None
    if body.count(b"\t") == rows * (len(names) - 1) and not body.translate(None, b"0123456789\t\n"):
        # only digits, and len(names) fields on every line
        try:  # any whitespace separates; the count lets numpy allocate once (growing the array is 3x slower)
            a = np.fromstring(body, dtype=np.int64, sep=" ", count=rows * len(names))
        except ValueError:
            pass
    if a is None or a.size != rows * len(names):
        raise data.DataError(f"{path}: not a file of {len(names)} integer columns per line (planted_share reads "
                             f"the files synthetic.py writes)")
    return a.reshape(rows, len(names)), names


def planted_share(data_path, name, max_pairs=1_000_000, seed=0):
    """How often consecutive interactions share a value, per item relation, against random pairs.

    Consecutive: a user's interactions in time order, each with the next one. Random: two
    random interactions of the whole file with different items (so both sides follow the
    same item popularity). For each relation of the KG whose heads are linked items: the
    share of pairs whose items have a value in common, both ways, and the lift (their
    ratio); "planted" and "noise" the same for any relation of PLANTED or NOISE. Planted
    relations have lifts well above 1, noise relations about 1. At most max_pairs pairs.
    """
    folder = os.path.join(data_path, name)
    files = dataset_files(folder, name)
    for p in files.values():
        if not os.path.isfile(p):
            raise data.DataError(f"{p}: file not found")
    inter, names = read_int_table(files["inter"])
    user, item, ts = (inter[:, names.index(c)] for c in ("user_id", "item_id", "timestamp"))
    du = np.diff(user)
    if not (np.all(du >= 0) and np.all(np.diff(ts)[du == 0] >= 0)):  # generate writes them in order already
        order = np.lexsort((ts, user))  # stable: ties keep file order, as data.build_sequences
        user, item = user[order], item[order]
    rng = np.random.default_rng(seed)
    same = np.flatnonzero(user[1:] == user[:-1])
    if len(same) > max_pairs:
        same = np.sort(rng.choice(same, max_pairs, replace=False))
    pairs = {"consecutive": (item[same], item[same + 1])}
    x, y = rng.integers(len(item), size=(2, len(same)))
    keep = item[x] != item[y]
    pairs["random"] = (item[x[keep]], item[y[keep]])

    link = data.read_atomic(files["link"], required=("item_id", "entity_id"))
    item_of = {e: int(i) for i, e in zip(link["item_id"], link["entity_id"])}
    kg = data.read_atomic(files["kg"], required=("head_id", "relation_id", "tail_id"))
    by_rel = {}
    for h, r, t in zip(kg["head_id"], kg["relation_id"], kg["tail_id"]):
        i = item_of.get(h)
        if i is not None:
            by_rel.setdefault(r, ([], []))
            by_rel[r][0].append(i)
            by_rel[r][1].append(t)
    n = int(max(item.max(), max(item_of.values()))) + 1
    shares = {}
    for r, (heads, tails) in by_rel.items():
        heads = np.array(heads, np.int64)
        tails = np.unique(tails, return_inverse=True)[1].ravel()
        o = np.argsort(heads, kind="stable")
        heads, tails = heads[o], tails[o]
        col = np.arange(len(heads)) - np.searchsorted(heads, heads, side="left")
        P = np.full((n, int(col.max()) + 1), -1, np.int64)  # item -> its values, -1 padded
        P[heads, col] = tails
        shares[r] = {k: ((P[a][:, :, None] == P[b][:, None, :]) & (P[a][:, :, None] >= 0)).any(axis=(1, 2))
                     for k, (a, b) in pairs.items()}
    out = {"pairs": int(len(same)), "relations": {}}
    summ = lambda s: {"consecutive": float(s["consecutive"].mean()), "random": float(s["random"].mean()),
                      "lift": float(s["consecutive"].mean() / max(s["random"].mean(), 1e-12))}
    for r, s in shares.items():
        out["relations"][r] = summ(s)
    for group, rels in (("planted", PLANTED), ("noise", NOISE)):
        have = [r for r in rels if r in shares]
        if have:
            out[group] = summ({k: np.any([shares[r][k] for r in have], axis=0) for k in pairs})
    return out


# ----------------------------------------------------------------------------

def main(argv=None):
    ap = Parser(prog="synthetic.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--name", required=True, help="dataset name: the folder <data_path>/<name>/ and its files' stem")
    ap.add_argument("--size", default="1m", choices=list(PRESETS), help="preset counts (default 1m)")
    ap.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=0, help="the same seed writes the same bytes")
    ap.add_argument("--data_path", default="dataset", help="where dataset folders live (default dataset, as train.py)")
    for k in ("users", "items", "interactions", "triples"):
        ap.add_argument(f"--{k}", type=positive(int), help=f"in place of the preset's {k}")
    ap.add_argument("--overwrite", action="store_true", help="replace a dataset of that name (and its cached TransE vectors)")
    ap.add_argument("--share", action="store_true", help="then measure the planted share from the written files")

    def run(argv):
        args = ap.parse_args(argv)
        s = generate(args.name, args.data_path, args.size, args.seed, overwrite=args.overwrite,
                     **{k: getattr(args, k) for k in ("users", "items", "interactions", "triples")
                        if getattr(args, k) is not None})
        for k in ("triples_by_relation", "length_min", "length_median", "length_max", "items_from", "seconds_generate"):
            print(f"{k:>20}: {s[k]}")
        if args.share:
            ps = planted_share(args.data_path, args.name)
            print(f"planted share over {ps['pairs']:,} consecutive pairs (a shared value: consecutive / random = lift):")
            for r, v in [*ps["relations"].items(), *((g, ps[g]) for g in ("planted", "noise") if g in ps)]:
                print(f"{r:>20}: {v['consecutive']:.4f} / {v['random']:.4f} = {v['lift']:.2f}")
        return 0

    return cli(run, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
