"""Prepare a dataset (fetch, KG, TransE vectors, splits) and print its statistics:

    python -m extras.prepare --dataset ml-100k [--kg files|attributes] [--json]
"""
import json
import sys

import data
from options import DATA_ARGS, FOLLOWS, cli, given_options, option_parser, transe_settings


def main(argv=None):
    ap = option_parser("python -m extras.prepare", "Prepare a RecBole knowledge-aware dataset for KSR and print its statistics.",
                       names=("dataset", "data_path", "kg", "keep_unlinked", "kg_embedding_size", "MAX_ITEM_LIST_LENGTH",
                              "transe_epochs", "transe_learning_rate", "transe_seed", "transe_optimizer",
                              "config_files", *DATA_ARGS))
    ap.add_argument("--json", action="store_true", help="print the statistics as one JSON object on the last line")
    return cli(lambda argv: prepare(parse_args(ap, argv)), sys.argv[1:] if argv is None else list(argv))


def parse_args(ap, argv):
    from extras import recbole_config
    recbole_config.add_options(ap)  # the data settings of RecBole's are this command's options too
    args = ap.parse_args(argv)
    kg_set = "kg" in given_options(argv)
    if args.config_files:  # a RecBole config: its data settings here (the training ones are train.py's)
        kg_set = recbole_config.apply(ap, argv, args.config_files, other_programs=True)["kg"] != "default"
        args = ap.parse_args(argv)
    if not kg_set:  # the dataset's own KG (options.FOLLOWS)
        args.kg = FOLLOWS["kg"](vars(args))
    return args


def prepare(args):
    log = lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)
    ds = data.load_dataset(args.dataset, args.data_path, args.kg, args.keep_unlinked, args.kg_embedding_size,
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
