"""A folder one process holds: the run folder a user names (--out_dir), and tune's and compare's
folders. A new run folder under --checkpoint_dir needs none of this: train.py makes it (os.mkdir makes a
folder or fails), so no other run can be in it.
"""
import contextlib
import os
import socket

from data import process_alive
from options import DataError

try:
    import fcntl  # POSIX: the kernel's flock makes a lock's takeover race-free
except ImportError:  # Windows: the pid in the lock alone says who holds it
    fcntl = None


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
def run_folder(folder, run_files, overwrite, resume=False):
    """A training run's folder, held from the check that it holds no run to the last write, so a second
    run into it is refused instead of mixing its files in: refused if it holds a run (any of run_files)
    unless overwrite, and then those files go first, so a results.json and a model.pt of two different
    runs never sit side by side. A resumed run (resume) goes on in its own folder: its files stay."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot write the run there ({e.strerror or e})") from None
    with locked(folder, "training run"):
        there = [f for f in run_files if os.path.exists(f)]
        if there and not (overwrite or resume):
            raise DataError(f"{folder}: holds a run ({', '.join(map(os.path.basename, there))}); choose another "
                            f"--out_dir, or pass --overwrite to replace it")
        for f in there if not resume else ():
            os.remove(f)
        yield folder
