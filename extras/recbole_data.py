"""RecBole's data settings beyond the default run, read by data.load_dataset only when a run sets one
(each default keeps everything, so the default run never imports this file). It imports nothing of
data.py's: data.py calls it.

    check_columns        load_col / unload_col must keep the columns the run reads
    filter_interactions  rm_dup_inter, val_interval, filter_inter_by_user_or_item, the k-core intervals:
                         RecBole's Dataset._data_filtering, in its order (id_tables: the .user/.item tables)
    filter_kg            entity_kg_num_interval, relation_kg_num_interval (KnowledgeBasedDataset's)
    kg_after_filters     the relations left after filter_kg, and kg_reverse_r
    ratio_split          split_ratio: RecBole's RS split instead of leave-one-out
    benchmark_splits     benchmark_filename: pre-split files of samples
"""
import os

import numpy as np
from extras.recbole_config import parse_intervals
from options import DataError

def field_names(a):
    """{our column name: the files' name} from RecBole's *_FIELD settings."""
    return {"user_id": a["USER_ID_FIELD"], "item_id": a["ITEM_ID_FIELD"], "timestamp": a["TIME_FIELD"],
            "head_id": a["HEAD_ENTITY_ID_FIELD"], "tail_id": a["TAIL_ENTITY_ID_FIELD"],
            "relation_id": a["RELATION_ID_FIELD"], "entity_id": a["ENTITY_ID_FIELD"]}


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
        if not hasattr(col, "vocab"):  # not a token column (data.Tokens)
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


def filter_kg(triples, n_entities, n_relations, item_link, a, log):
    """The triples RecBole keeps (KnowledgeBasedDataset._filter_kg_by_triple_num): entities with a
    number of triples (as head plus as tail) in entity_kg_num_interval and relations with one in
    relation_kg_num_interval, again and again until nothing changes; then the item links whose entity
    is no longer in the KG go (_filter_link). Returns (a boolean mask of the triples, the item links)."""
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
    in_kg = np.zeros(n_entities, bool)
    in_kg[triples[keep][:, [0, 2]].ravel()] = True
    item_link = {i: e for i, e in item_link.items() if in_kg[e]}
    log(f"filter: KG {len(triples)} -> {int(keep.sum())} triples; {len(item_link)} items still linked")
    return keep, item_link


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


def id_tables(a, path_of, read_fields, fields, item_cols, users_tok, items_tok, inter_columns):
    """The .user/.item tables RecBole loads (those load_col names), each filtered by val_interval on its
    own fields: {"user" or "item": a boolean per code of the .inter's users (items), True where the
    table keeps the id} (filter_interactions' `tables`). A val_interval field in none of the files
    loaded is refused, as RecBole refuses it."""
    tables, seen = {}, set(inter_columns)
    for name, tok in (("user", users_tok), ("item", items_tok)):
        if not (a["load_col"] and name in a["load_col"] and os.path.exists(path_of(name))):
            continue
        cols = item_cols if name == "item" else read_fields(path_of("user"), ("user_id",), fields)
        ok = np.ones(len(cols[f"{name}_id"]), bool)
        for field, allowed in (a["val_interval"] or {}).items():
            if field in cols:
                ok &= value_mask(cols[field], allowed, field, path_of(name))
        seen |= set(cols)
        ids = cols[f"{name}_id"]
        kept = set(np.asarray(ids.vocab, dtype=object)[np.unique(ids.codes[ok])].tolist())
        tables[name] = np.array([t in kept for t in tok.vocab], dtype=bool)
    for field in a["val_interval"] or {}:
        if field not in seen:
            raise DataError(f"{path_of('inter')}: val_interval: field {field!r} is in none of the files loaded (RecBole: "
                            f"'Field [{field}] not defined in dataset')")
    return tables


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


def benchmark_splits(parts, paths):
    """RecBole's benchmark_filename for a sequential model: three files (train, valid, test) of
    samples, one a line: a user, the items before the target (<ITEM_ID_FIELD>_list, a token_seq,
    oldest first) and the target (ITEM_ID_FIELD). Used as given: RecBole filters none of them and
    cuts no list. Returns (the items of every sample, one after the other; the padded width; for train,
    valid and test (users, starts, ends): data.Split's fields; user tokens; item tokens)."""
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
    return flat, width, bounds, ["[PAD]"] + list(users), ["[PAD]"] + list(items)
