"""Every command the README shows runs as written on a fresh clone: its program answers --help, and
every option the README gives it is one that program takes. (Training itself is the other tests'.)"""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBCOMMANDS = ("explain", "tune", "compare", "recommend")  # train.COMMANDS' programs


def readme_commands():
    """The commands of the README: each line of its bash blocks, and each `python ...`/`torchrun ...`
    in its text; comments and line continuations folded."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    commands += re.findall(r"`((?:python|torchrun) [^`]+)`", text.replace("\n", " "))
    return sorted(set(commands))


def program(words):
    """(the command that runs the program, the rest): python train.py [explain|tune|compare], python -m
    MODULE, or torchrun's train.py."""
    if words[0] == "torchrun":
        words = ["python"] + words[next(i for i, w in enumerate(words) if w.endswith(".py")):]
    if words[1] == "-m":
        return words[:3], words[3:]
    n = 3 if len(words) > 2 and words[1] == "train.py" and words[2] in SUBCOMMANDS else 2
    return words[:n], words[n:]


def usage(prog):
    """What `prog --help` prints (it must answer)."""
    out = subprocess.run([sys.executable, *prog[1:], "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "0"})
    assert out.returncode == 0 and "usage" in out.stdout, (prog, out.stderr[-2000:])
    return out.stdout


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    import train
    assert set(SUBCOMMANDS) == {k for k, v in train.COMMANDS.items() if v.endswith(":main")}  # train.py's programs
    assert "python train.py --dataset ml-100k" in COMMANDS and "python -m pytest -q tests" in COMMANDS
    assert any(c.startswith("python train.py compare") for c in COMMANDS) and len(COMMANDS) >= 12, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_runs_as_written(command):
    words = shlex.split(command)
    if words[0] == "pip":  # the install line: what it installs is there
        assert all(os.path.exists(os.path.join(ROOT, w)) for w in words if w.endswith(".txt"))
        return
    if words[:3] == ["python", "-m", "pytest"]:  # the tests' own command: CI runs this very line
        with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
            assert command in f.read()
        return
    if words[:2] == ["python", "-c"]:  # a Python call: its imports resolve
        imports = ";".join(s for s in words[2].split(";") if s.strip().startswith(("from ", "import ")))
        out = subprocess.run([sys.executable, "-c", imports], cwd=ROOT, capture_output=True, text=True)
        assert imports and out.returncode == 0, out.stderr
        return
    prog, rest = program(words)
    helps = [usage(prog)] + ([usage(["python", "train.py"])] if prog[-1] == "compare" else [])  # and its runs' options
    for option in (w.strip("[]").split("=")[0] for w in rest if w.strip("[]").startswith("--")):
        assert any(re.search(rf"{option}\b", h) for h in helps), f"{command}: {' '.join(prog[1:])} takes no {option}"
    for path in (w for w in rest if "/" in w and not w.startswith(("runs/", "RUN"))):
        assert os.path.exists(os.path.join(ROOT, path)), f"{command}: {path} is not in the tree"
