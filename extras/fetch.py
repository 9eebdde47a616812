"""What a first run needs before it reads a file: ml-100k on a fresh machine, and the check that a
big dataset fits in this machine's memory. data.load_dataset calls these; they import nothing of
the project but options.

    fetch_ml100k     ml-100k from the recbole wheel on the package index (the one reachable host)
    check_ram        refuse, before any work, a dataset too big for the memory available
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from options import DataError

ML100K_WHEEL = "recbole==1.2.1"
ML100K_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.kg", "ml-100k.link", "ml-100k.user")


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
    try:  # a full disk or a file-size limit while extracting: one line, as for any file (data.replacing)
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
                if not os.path.isdir(target):  # not another run that put it there first
                    raise
    except OSError as e:  # (the temporary folder is gone with the with-block)
        raise DataError(f"{target}: cannot write it: {e.strerror or e}") from None
    log(f"ml-100k: {len(ML100K_FILES)} files in {target}")
    return target


def verify_sha256(path, expected, manual=""):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise DataError(f"{path}: sha256 {h.hexdigest()} does not match the expected {expected}" + (f"; {manual}" if manual else ""))


BYTES_PER_INTERACTION = 200  # peak RSS (RAM) of load_dataset per interaction: 168 measured at 20M (docs/scale.md), + a margin


def check_ram(inter_path, log):
    """Refuse, in one line and before any work, a dataset that would not fit in memory: the
    number of interactions (estimated from the file's size and its first lines) times
    BYTES_PER_INTERACTION, against the memory this machine has available now."""
    try:
        size = os.path.getsize(inter_path)
        with open(inter_path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as e:  # gone, a folder, no permission: the reader's own line
        raise DataError(f"{inter_path}: cannot read it ({e.strerror or e})") from None
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
