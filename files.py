"""A file is whole or absent, and what a user made is never overwritten.

    replacing(path)      write to a temporary name beside `path`, then rename it into place
    save(obj, path)      results.json or a checkpoint, through replacing()
    locked(folder)       hold folder/.lock: a second run or search on the folder is refused
    run_folder           a training run's folder, locked, refused if it holds a run (unless --overwrite)
    remove_stale         what a killed run left behind (temporary files named after its pid)

Used by data.py (KG vectors, the ml-100k fetch), train.py and tune.py (run folders).
"""
import contextlib
import io
import json
import os
import re
import shutil
import socket
import tempfile

from cli import DataError

try:
    import fcntl  # POSIX: the kernel's flock makes a lock's takeover race-free
except ImportError:  # Windows: the pid in the lock alone says who holds it
    fcntl = None


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


@contextlib.contextmanager
def locked(folder, holder, error=DataError, prefix=""):
    """Hold folder/.lock (it names this process: pid and host) until the with-block ends. Another
    process of this project holding it is refused at once, in one line naming it (`error`, the
    message after `prefix`); a lock whose process is gone (a killed run) is taken over. The
    kernel's flock is what is held, so two takeovers of one stale lock cannot both win; a lock
    of another host is never taken over (its pid means nothing here)."""
    path = os.path.join(folder, ".lock")
    host = socket.gethostname()
    where = f"--out_dir {folder}"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise error(f"{prefix}{where}: cannot write there ({e.strerror or e})") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:  # a live process holds it
            got = False
        os.lseek(fd, 0, os.SEEK_SET)
        pid, _, their_host = os.read(fd, 200).decode("utf-8", "replace").strip().partition(" ")
        if got and os.path.exists(path) and os.stat(path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)  # its holder removed it as we opened it: try again
            continue
        if got and (not pid or (their_host == host and pid.isdigit() and not process_alive(int(pid)))):
            break  # ours: new, or its process is gone
        os.close(fd)
        who = f"process {pid} on {their_host}" if pid else "a process starting up"
        raise error(f"{prefix}{where} is in use by another {holder} ({who}, {path}); wait for it, or use another "
                    f"--out_dir") from None
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {host}".encode())
    except OSError as e:  # a full disk: the lock cannot name us
        os.remove(path)
        os.close(fd)
        raise error(f"{prefix}{where}: cannot write there ({e.strerror or e})") from None
    try:
        yield
    finally:
        os.remove(path)  # before the flock goes: a process that opened this file sees it removed, and tries again
        os.close(fd)


@contextlib.contextmanager
def run_folder(folder, run_files, overwrite):
    """A training run's folder, held (locked) from the check that it holds no run to the last
    write: made before any long work, a folder holding a run (any of run_files) refused unless
    overwrite; then those files go first, so a results.json and a model.pt of two different runs
    never sit side by side."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot write the run there ({e.strerror or e})") from None
    with locked(folder, "training run"):
        held = [f for f in run_files if os.path.exists(f)]
        if held and not overwrite:
            raise DataError(f"{folder}: holds a run ({', '.join(map(os.path.basename, held))}); choose another "
                            f"--out_dir, or pass --overwrite to replace it")
        for f in held:
            os.remove(f)
        yield
