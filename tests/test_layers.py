"""The import rule of docs/ARCHITECTURE.md: a module imports only from its own subpackage or from
a lower layer, never from a higher one or a sibling on the same layer. Every import counts,
including those inside functions, so a lazy import cannot hide an arrow that runs up."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "carvq_gguf"

# layer of every subpackage and top-level module; a lower number is further down
LAYERS = {
    "errors": 0,
    "atomic": 1, "units": 1, "data": 1, "patches": 1,
    "runtime": 2, "codec": 2,
    "gguf": 3, "hf": 3, "awq": 3,
    "convert": 4,
    "eval": 5,
    "cli": 6,
}
RUNTIME_STDLIB_ONLY = "runtime"


def unit_of(module: str) -> str:
    """The subpackage (or top-level module) a dotted carvq_gguf module belongs to."""
    parts = module.split(".")
    assert parts[0] == "carvq_gguf", module
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every carvq_gguf import in the file, wherever it stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("carvq_gguf")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("carvq_gguf"):
                continue
            # `from carvq_gguf.gguf import names` imports the module carvq_gguf.gguf.names
            found += [(node.lineno, f"{target}.{alias.name}" if target.count(".") < 1 else target)
                      for alias in node.names]
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        source = unit_of(module_name(path))
        if source == "":
            continue  # carvq_gguf/__init__.py: the package's lazy facade
        for line, target in imports(path):
            dest = unit_of(target)
            if dest == source:
                continue
            if dest not in LAYERS or source not in LAYERS:
                out.append(f"{path.relative_to(root.parent)}:{line}: {source} or {dest} has no layer")
            elif LAYERS[dest] >= LAYERS[source]:
                out.append(f"{path.relative_to(root.parent)}:{line}: {source} (layer {LAYERS[source]}) "
                           f"imports {target} ({dest}, layer {LAYERS[dest]})")
    return out


def test_imports_only_point_down() -> None:
    assert violations() == []


def test_every_subpackage_has_a_layer() -> None:
    units = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}
    units.discard("__init__")
    assert units | {"patches"} == set(LAYERS)


def test_the_runtime_imports_only_the_standard_library_at_import_time() -> None:
    import sys

    allowed = sys.stdlib_module_names
    for path in (PACKAGE / RUNTIME_STDLIB_ONLY).glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: imports inside functions run later, by choice
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            outside = [n for n in names if n.split(".")[0] not in allowed and n != "__future__"]
            assert not outside, f"{path.name} imports {outside} at import time"


def test_pyproject_lists_every_package() -> None:
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert listed == on_disk | {"carvq_gguf.patches"}
