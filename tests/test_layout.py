"""The layout a reader relies on: ksr.py stands alone, and the project's modules import each
other in one direction only (no cycles), read from the source with ast: imports at module
level and inside functions alike."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_modules():
    """{module name: path}: the top-level modules, and kernels/'s files as kernels (its
    __init__.py) and kernels.<name>."""
    mods = {f[:-3]: os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")}
    for f in os.listdir(os.path.join(ROOT, "kernels")):
        if f.endswith(".py"):
            mods["kernels" if f == "__init__.py" else f"kernels.{f[:-3]}"] = os.path.join(ROOT, "kernels", f)
    return mods


def imports_of(path, package=None):
    """Every module name an import statement in this file names; a relative import
    (`from .x import y` in kernels/) is named package.x."""
    names = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module if node.level == 0 else ".".join(filter(None, [package, node.module])))
    return names


def graph():
    """{module: the project's modules it imports}; `import kernels.x` counts as kernels.x, which
    imports kernels first (Python runs the package's __init__.py)."""
    mods = project_modules()
    g = {}
    for m, path in mods.items():
        out = set()
        for n in imports_of(path, "kernels" if m.startswith("kernels") else None):
            while n and n not in mods:
                n = n.rpartition(".")[0]
            if n:
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


def test_no_import_cycles():
    g = graph()
    assert {"train", "data", "ksr", "kernels", "cli", "files"} <= set(g)  # the graph is the project's
    assert "train" in g["tune"] and "ksr" in g["kernels.fast_torch"] and "kernels.fast_torch" in g["kernels"]  # edges seen
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_ksr_imports_only_torch():
    names = imports_of(os.path.join(ROOT, "ksr.py"))
    assert names and all(n == "torch" or n.startswith("torch.") for n in names), sorted(names)


def test_the_core_needs_no_extra():
    """Nothing in the core (what a student reads) imports an extra program."""
    g = graph()
    core = {"ksr", "train", "data", "transe", "kernels", "kernels.fast_torch", "kernels.kv_memory", "kernels.cpu", "cli", "files",
            "atomic_files", "distributed"}
    extras = set(g) - core
    for m in core:
        on_demand = ON_DEMAND.get(m, set())
        assert not (g[m] & extras) - on_demand, f"{m} imports {sorted((g[m] & extras) - on_demand)}"
    for m, names in ON_DEMAND.items():  # imported inside a function only: importing the core never loads them
        assert not names & module_level_imports(project_modules()[m]), f"{m} imports {sorted(names)} at module level"


# The core's calls into an extra: train.parse_args and data.py's command read --config_files with recbole_config
# (issue 21), importing it inside the function, only for a run that has a RecBole config
ON_DEMAND = {"train": {"recbole_config"}, "data": {"recbole_config"}}


def module_level_imports(path):
    """The module names that import statements at the top level of the file (not inside a function) name."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names
