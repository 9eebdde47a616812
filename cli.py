"""How every program here talks to its user: options that refuse bad values, one line per
error, and exit codes (2: a bad option, 1: bad data or a failed run, 130: Ctrl-C).

The options themselves and their defaults are train.py's (train.option_parser); data.py,
explain.py, tune.py and the bench scripts read them from there.
"""
import argparse
import math
import sys


class UsageError(Exception):
    """A bad option or value: cli() prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input or a failed run (data.DataError, train.NonFiniteError): one line, exit 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (cli() catches it)
        raise UsageError(f"{self.prog}: error: {message}")


def str2bool(v):
    if v.lower() not in ("true", "1", "yes", "false", "0", "no"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")
    return v.lower() in ("true", "1", "yes")


def number(cast, low=None, high=None, positive=False):
    """An argparse type: `cast`, finite (never NaN or inf), > 0 or in [low, high]."""
    def parse(v):
        x = cast(v)
        if positive and not (math.isfinite(x) and x > 0):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {v!r}")
        if not math.isfinite(x) or (low is not None and x < low) or (high is not None and x > high):
            raise argparse.ArgumentTypeError(f"must be a finite number in [{low}, {high}], got {v!r}")
        return x
    parse.__name__ = cast.__name__  # argparse names it in errors: "invalid int value"
    return parse


def positive(cast):
    return number(cast, positive=True)


def topk_list(v):
    ks = [k.strip() for k in v.strip("[]").split(",") if k.strip()]
    if not ks or not all(k.isdigit() and int(k) > 0 for k in ks):
        raise argparse.ArgumentTypeError(f"expected a list of positive integers such as [10] or 5,10,20, got {v!r}")
    return [int(k) for k in ks]


def given_options(argv):
    """The names of the options on a command line (`--name value` or `--name=value`)."""
    return {a[2:].split("=")[0] for a in argv if a.startswith("--")}


def cli(program, argv):
    """Run program(argv) as a command: a bad option is one line and exit 2; bad data, a failed
    run or running out of memory one line and exit 1; Ctrl-C one line and exit 130. Files are written whole or not at
    all (data.replaced_atomically), so an interrupted run leaves nothing half-written."""
    try:
        return program(argv)
    except UsageError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError
        if type(e).__name__ == "DistBackendError":  # under torchrun: another process died or stopped answering
            print(f"error: the job lost a process ({str(e).splitlines()[0][:160]})", file=sys.stderr)
            return 1
        if isinstance(e, RuntimeError) and "allocate" not in str(e) and "out of memory" not in str(e):
            raise  # any other RuntimeError is a bug: keep its traceback
        print(f"error: out of memory ({str(e).splitlines()[0][:120] or 'MemoryError'}); smaller sizes or batches need less",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: every file written so far is complete; nothing is half-written", file=sys.stderr)
        return 130
