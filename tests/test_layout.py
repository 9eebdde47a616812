"""The layout a reader relies on, read from the source with ast (imports at module level and inside
functions alike): the top level is the design's; ksr.py stands alone; the core never imports the
programs around it at module level; the modules import each other in one direction only; and the
default command loads few of our modules."""
import ast
import os
import subprocess
import sys

from conftest import write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = {"ksr", "data", "train", "options", "transe"}  # the top-level modules: the design's three and two more
FOLDERS = {"kernels", "extras", "bench"}  # kernels/: the fast paths; extras/: programs around the core; bench/
TOP_LEVEL = {f"{m}.py" for m in CORE} | FOLDERS | {"tests", "docs", ".ci", "README.md", "requirements.txt", ".gitignore"}
# The core's imports of extras/, each inside the function whose option or case needs it (never at module level).
# (train.COMMANDS names the programs that import train.py itself: reached by name, so never a cycle.)
ON_DEMAND = {
    "train": {"extras.recbole_config", "extras.sampled_eval", "extras.distributed", "extras.run_lock"},
    "data": {"extras.recbole_data", "extras.line_reader", "extras.fetch"},
}


def project_modules():
    """{module name: path}: the top-level modules, and the files of kernels/, extras/ and bench/ as
    kernels (its __init__.py), kernels.<name>, extras.<name>, bench.<name>."""
    mods = {f[:-3]: os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")}
    for folder in sorted(FOLDERS):
        for f in os.listdir(os.path.join(ROOT, folder)):
            if f.endswith(".py"):
                mods[folder if f == "__init__.py" else f"{folder}.{f[:-3]}"] = os.path.join(ROOT, folder, f)
    return mods


def imports_of(path, package=None, module_level=False):
    """Every module name an import statement in this file names (only those at the top of the file
    with module_level); a relative import (`from .x import y` in kernels/) is named package.x, and
    `from extras import tune` names extras.tune."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in (tree.body if module_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else ".".join(filter(None, [package, node.module]))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def graph(module_level=False):
    """{module: the project's modules it imports}; `import kernels.x` counts as kernels.x, which imports
    kernels first (Python runs the package's __init__.py)."""
    mods = project_modules()
    g = {}
    for m, path in mods.items():
        out = set()
        for n in imports_of(path, "kernels" if m.startswith("kernels") else None, module_level):
            while n and n not in mods and "." in n:
                n = n.rpartition(".")[0]
            if n in mods:
                out.add(n)
                if n.startswith("kernels.") and m != "kernels":
                    out.add("kernels")
        g[m] = out - {m}
    return g


def find_cycle(g):
    """One cycle of the directed graph g as a list of nodes, or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(n, path):
        state[n] = 1
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (c := visit(m, path + [m])):
                return c
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n, [n])):
            return c
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_top_level_is_the_designs():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    top = {p.split("/")[0] for p in tracked} or set(os.listdir(ROOT)) - {".git"}
    assert top <= TOP_LEVEL, f"not the design's: {sorted(top - TOP_LEVEL)}"
    assert {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} == CORE
    for folder in ("extras", "bench"):  # flat modules, one folder down
        assert not [d for d in os.listdir(os.path.join(ROOT, folder))
                    if os.path.isdir(os.path.join(ROOT, folder, d)) and d != "__pycache__"], folder


def test_no_import_cycles():
    g = graph()
    assert CORE | {"kernels", "kernels.cpu", "extras.tune", "bench.epoch"} <= set(g)  # the graph is the project's
    assert "train" in g["extras.tune"] and "ksr" in g["kernels.fast_torch"] and "extras.recbole_config" in g["train"]
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_ksr_imports_only_torch():
    names = imports_of(os.path.join(ROOT, "ksr.py"))
    assert names and all(n == "torch" or n.startswith("torch.") for n in names), sorted(names)


def test_the_core_imports_the_surroundings_only_where_it_needs_them():
    """The core (the top-level modules and kernels/) imports nothing of extras/ or bench/ at module
    level; inside a function, only what ON_DEMAND lists. kernels/__init__.py imports no implementation
    at module level: the table names them, and a run loads the ones it uses."""
    g, top = graph(), graph(module_level=True)
    core = [m for m in g if m in CORE or m.split(".")[0] == "kernels"]
    for m in core:
        outside = {n for n in g[m] if n.split(".")[0] in ("extras", "bench")}
        assert not {n for n in top[m] if n.split(".")[0] in ("extras", "bench")}, f"{m} imports {sorted(outside)} at module level"
        assert outside <= ON_DEMAND.get(m, set()), f"{m} imports {sorted(outside - ON_DEMAND.get(m, set()))}"
    assert top["kernels"] == {"ksr"}, sorted(top["kernels"])


def test_train_epoch_calls_the_model_itself():
    """The step in plain sight: forward (the model's own call gives the loss), backward, step."""
    with open(os.path.join(ROOT, "train.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_epoch")
    calls = {ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)}
    assert {"model", "opt.zero_grad", "opt.step"} <= calls and any(c.endswith(".backward") for c in calls), sorted(calls)


def test_the_default_command_loads_few_of_our_modules(tmp_path):
    """`python train.py` with the data prepared (the KG vectors cached) loads at most 7 of our modules,
    at most 2,000 lines in all (cpu.cpp aside)."""
    write_tiny_dataset(str(tmp_path))
    code = ("import os, sys, train\n"
            "argv = ['--dataset', 'tiny', '--data_path', '.', '--kg_embedding_size', '8', '--epochs', '1', '--max_steps', '2']\n"
            "assert train.main(argv) == 0\n"
            "ours = [m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None) and "
            "os.path.abspath(m.__file__).startswith(sys.argv[1] + os.sep)]\n"
            "print('\\n'.join(ours))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    for _ in range(2):  # the first run prepares the data (TransE: transe.py), the second is the one counted
        out = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
    files = [ln for ln in out.stdout.splitlines() if ln.endswith(".py")]
    lines = {os.path.relpath(f, ROOT): sum(1 for _ in open(f, encoding="utf-8")) for f in files}
    assert {"train.py", "data.py", "ksr.py", "options.py"} <= set(lines), lines
    assert len(lines) <= 7 and sum(lines.values()) <= 2000, lines
    assert len(os.listdir(tmp_path / "runs")) == 2  # two runs, two folders
