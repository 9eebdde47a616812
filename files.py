"""A file is whole or absent, and what a user made is never overwritten.

    replacing(path)      write to a temporary name beside `path`, then rename it into place
    save(obj, path)      results.json or a checkpoint, through replacing()
    prepare_run_folder   a training run's folder, refused if it holds a run (unless --overwrite)
    remove_stale         what a killed run left behind (temporary files named after its pid)

Used by data.py (KG vectors, the ml-100k fetch), train.py and tune.py (run folders).
"""
import contextlib
import io
import json
import os
import re
import shutil
import tempfile

from cli import DataError


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
def replacing(path):
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


def save(obj, path):
    """results.json (a dict) or a checkpoint (torch.save), written with replacing()."""
    if path.endswith(".json"):
        payload = json.dumps(obj, indent=1).encode()
    else:
        import torch  # only checkpoints need it
        buf = io.BytesIO()
        torch.save(obj, buf)  # in memory first: torch's own writer turns a full disk into an opaque RuntimeError
        payload = buf.getbuffer()
    with replacing(path) as tmp, open(tmp, "wb") as f:
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
