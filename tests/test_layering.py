"""The house rules of ``helpers/``, checked on the source: imports run one way (tools -> paper2 -> paper1 ->
the root), no private name crosses a module boundary, the package's map names every module, and nothing
in the code, tests, benchmarks or notebooks points at a file outside the repository."""
import ast
import json
import re

import pytest

from helpers.paths import REPO_ROOT

HELPERS = REPO_ROOT / "helpers"
RANK = {"root": 0, "paper1": 1, "paper2": 2, "tools": 3}


def module_name(path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in RANK else "root"


def imported(path, package: str) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in ``path``, lazy ones included, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


SOURCES = sorted(HELPERS.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_imports_run_one_way(path):
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for mod, names, line in imported(path, package):
        targets = [mod] if mod != "helpers" else [f"helpers.{n}" for n in names]
        for target in targets:
            if not target.startswith("helpers.") or target == "helpers.__version__":
                continue
            assert RANK[wing(target)] <= RANK[wing(me)], (
                f"{path.relative_to(REPO_ROOT)}:{line}: {me} ({wing(me)}) imports {target} ({wing(target)}); "
                "imports run tools -> paper2 -> paper1 -> root only")


@pytest.mark.parametrize("folder", ["helpers", "tests", "benchmarks"])
def test_no_private_name_is_imported_across_modules(folder):
    bad = []
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        for mod, names, line in imported(path, module_name(path).rsplit(".", 1)[0]):
            if mod.startswith(("helpers", "tests", "benchmarks")) or mod == "":
                bad += [f"{path.relative_to(REPO_ROOT)}:{line}: {mod}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported from another module: " + "; ".join(bad)


def test_the_map_names_every_module():
    doc = ast.get_docstring(ast.parse((HELPERS / "__init__.py").read_text()))
    for path in SOURCES:
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(HELPERS)
        if len(rel.parts) > 1:  # a wing: its module is listed under the wing's heading
            section = doc.split(f"\n{rel.parts[0]}/", 1)[-1].split("\n\n", 1)[0]
        else:
            section = doc.split("\n\n", 2)[-1].split("\npaper1/", 1)[0]
        assert re.search(rf"^\s+{path.stem}\s", section, re.M), f"helpers/__init__.py's map lacks {rel}"


def _texts():
    """The code, tests, benchmarks and notebook sources (code and Markdown cells) that a reader runs or reads."""
    me = REPO_ROOT / "tests" / "test_layering.py"
    for folder in ("helpers", "tests", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path != me:
                yield path, path.read_text()
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        yield path, "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])


def test_no_reference_to_files_outside_the_repository():
    outside = [name + ".md" for name in ("METHODS", "DESIGN")]  # the authors' notes, not in the repository
    bad = [f"{p.relative_to(REPO_ROOT)}: {name}" for p, text in _texts() for name in outside if name in text]
    assert not bad, "references to files outside the repository: " + "; ".join(bad)


def test_no_retired_names():
    retired = ["pipeline" + "2", "exp.memory" + "["]
    bad = [f"{p.relative_to(REPO_ROOT)}: {name}" for p, text in _texts() for name in retired if name in text]
    assert not bad, "; ".join(bad)
