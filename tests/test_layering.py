"""DESIGN.md section 1 dependency rules, checked on the source (ast), not by convention:
- ``minivit/`` imports neither mpi4py nor minivit.parallel / minivit.io / minivit.synth;
- ``synth/`` and ``io/`` import nothing from the model package, minivit.parallel or mpi4py
  (io may use the synth generators: both are data-side packages).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> (package it is installed as, import prefixes it must not use)
RULES = {
    "minivit": ("minivit", ("mpi4py", "minivit.parallel", "minivit.io", "minivit.synth")),
    "synth": ("minivit.synth", ("mpi4py", "minivit.parallel", "minivit.io")),
    "io": ("minivit.io", ("mpi4py", "minivit.parallel")),
}
# the data packages may only take these names from the model package namespace
DATA_SIDE = ("minivit.io", "minivit.synth")


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


@pytest.mark.parametrize("folder", sorted(RULES))
def test_dependency_rules(folder):
    assert violations(folder) == []


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
