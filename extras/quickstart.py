"""RecBole's quick start for ksr: run_recbole(model="KSR", dataset=..., config_file_list=..., config_dict=...)
becomes run_ksr(dataset=..., config_file_list=..., config_dict=...), a training run with RecBole's
precedence (files in order, then config_dict, then `argv`, train.py's options).

    from extras.quickstart import run_ksr
    results = run_ksr(dataset="ml-100k", config_file_list=["docs/ksr-ml100k.yaml"])
"""
import train


def run_ksr(dataset=None, config_file_list=None, config_dict=None, argv=(), log=print):
    """The results dict (results.json) of the run; bad settings raise options.UsageError, bad data
    options.DataError."""
    argv = list(argv) + (["--dataset", dataset] if dataset else []) + (["--config_files", *config_file_list]
                                                                         if config_file_list else [])
    return train.run(vars(train.parse_args(argv, config_dict=config_dict)), log)
