"""DESIGN.md section 1 dependency rules, checked on the source (ast), not by convention:
- ``minivit/`` imports neither mpi4py nor minivit.parallel / minivit.io / minivit.synth;
- ``synth/`` and ``io/`` import nothing from the model package, minivit.parallel or mpi4py
  (io may use the synth generators: both are data-side packages);
- the model files (``minivit/`` outside ``minivit/tools/``) do not import the tooling;
- the scheme files (``parallel/*.py``) import neither the training runtime
  (``parallel/runtime/``) nor the tools (``parallel/tools/``).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# folder -> (package it is installed as, import prefixes it must not use)
RULES = {
    "minivit": ("minivit", ("mpi4py", "minivit.parallel", "minivit.io", "minivit.synth")),
    "synth": ("minivit.synth", ("mpi4py", "minivit.parallel", "minivit.io")),
    "io": ("minivit.io", ("mpi4py", "minivit.parallel")),
}
# the data packages may only take these names from the model package namespace
DATA_SIDE = ("minivit.io", "minivit.synth")
# rules on part of a folder: name -> (folder, package, sub-folders skipped (None: the
# folder's top level only), import prefixes it must not use)
PART_RULES = {
    "model": ("minivit", "minivit", ("tools",), ("minivit.tools",)),
    "schemes": ("parallel", "minivit.parallel", None,
                ("minivit.parallel.runtime", "minivit.parallel.tools")),
}


def imported_modules(path, package):
    """Absolute names of every module imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names += [f"{mod}.{a.name}" for a in node.names] if mod in ("minivit",) else [mod]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(node.args[0].value)
    return names


def module_package(path, folder, package):
    """Package a file in ``folder`` (or a sub-folder of it) is installed in."""
    parts = path.relative_to(ROOT / folder).parts[:-1]
    return ".".join((package, *parts))


def violations(folder):
    package, banned = RULES[folder]
    found = []
    # rglob: a rule holds in every sub-package too, not just the folder's top level
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imported_modules(path, module_package(path, folder, package)):
            bad = any(name == b or name.startswith(b + ".") for b in banned)
            # synth/io: the model package itself (minivit.<model module>) is banned too
            if folder != "minivit" and name.startswith("minivit.") and not name.startswith(DATA_SIDE):
                bad = True
            if bad:
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def part_violations(rule):
    folder, package, skipped, banned = PART_RULES[rule]
    paths = ((ROOT / folder).glob("*.py") if skipped is None else
             (p for p in (ROOT / folder).rglob("*.py")
              if p.relative_to(ROOT / folder).parts[0] not in skipped))
    found = []
    for path in sorted(paths):
        for name in imported_modules(path, module_package(path, folder, package)):
            if any(name == b or name.startswith(b + ".") for b in banned):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(RULES))
def test_dependency_rules(folder):
    assert violations(folder) == []


@pytest.mark.parametrize("rule", sorted(PART_RULES))
def test_model_and_schemes_import_no_runtime_or_tools(rule):
    assert part_violations(rule) == []


def test_the_part_rules_catch_runtime_and_tool_imports(tmp_path, monkeypatch):
    (tmp_path / "minivit" / "tools").mkdir(parents=True)
    (tmp_path / "minivit" / "model.py").write_text("from .tools import bench\n")
    (tmp_path / "minivit" / "tools" / "bench.py").write_text("from ..model import ViT\n")
    (tmp_path / "parallel" / "runtime").mkdir(parents=True)
    (tmp_path / "parallel" / "zero.py").write_text("from .runtime.step import x\n")
    (tmp_path / "parallel" / "runtime" / "step.py").write_text("from ..zero import y\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert part_violations("model") == ["minivit/model.py imports minivit.tools"]
    assert part_violations("schemes") == ["parallel/zero.py imports minivit.parallel.runtime.step"]


def test_the_checker_catches_a_banned_import(tmp_path, monkeypatch):
    fake = tmp_path / "minivit"
    fake.mkdir()
    (fake / "bad.py").write_text("from minivit.parallel import grid\nimport mpi4py\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert violations("minivit") == ["minivit/bad.py imports minivit.parallel",
                                     "minivit/bad.py imports mpi4py"]


def test_the_checker_looks_into_sub_packages(tmp_path, monkeypatch):
    deep = tmp_path / "synth" / "sub"
    deep.mkdir(parents=True)
    (deep / "bad.py").write_text("from ...model import ViT\nfrom .. import rng\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    # ``...model`` from minivit.synth.sub is minivit.model (banned); ``..rng`` is
    # minivit.synth.rng (allowed)
    assert violations("synth") == ["synth/sub/bad.py imports minivit.model"]
