"""Keeps DESIGN.md's import table true, and keeps import time free of side effects."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "truecost"
KERNEL = {"types", "errors", "clock", "pii"}
# room -> rooms it may import (besides the kernel and itself): ../shared/DESIGN.md's table. Denial by
# default: a package of src/truecost without a row here fails the test.
ALLOWED = {
    "pricing": set(),
    "ledger": {"pricing"},
    "tracking": {"pricing", "ledger"},
    "integrations": {"pricing", "ledger", "tracking"},
    "cache": set(),
    "routing": set(),
    "upstream": set(),
    "gateway": {"pricing", "ledger", "tracking", "cache", "routing", "upstream", "dashboard", "integrations"},
    "audit": {"ledger", "pricing", "routing"},
    "dashboard": {"audit", "ledger"},
    "demo": {"pricing", "ledger", "tracking", "cache", "routing", "upstream", "gateway", "audit"},
    "servers": set(),
    "cli": None,  # the composition root: may import anything
}
# Only these read settings from the environment; every other module takes explicit arguments.
READS_ENVIRONMENT = ("cli/", "gateway/app.py", "gateway/config.py", "gateway/config_types.py")


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).parts
        yield path, (rel[0] if len(rel) > 1 else Path(rel[0]).stem), ast.parse(path.read_text())


def _imported(path: Path, node: ast.AST) -> list[tuple[str, list[str]]]:
    """(absolute module, names) for an import statement, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if not node.level:
        return [(node.module or "", [a.name for a in node.names])]
    package = list(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    base = package[: len(package) - (node.level - 1)]
    return [(".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names])]


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "truecost" else None


def test_every_package_has_a_row_in_the_table():
    rooms = {room for _, room, _ in _modules() if room != "__init__"}
    assert sorted(rooms - KERNEL - set(ALLOWED)) == []


def test_imports_flow_the_way_the_design_says():
    problems = []
    for path, room, tree in _modules():
        for node in ast.walk(tree):
            for module, _names in _imported(path, node):
                target = _room(module)
                if target is None or target == room or target in KERNEL:
                    continue
                if target in ("cli", "demo", "bench") and room != "cli":  # cli runs the demo
                    problems.append(f"{path}: imports {target}")
                elif room in KERNEL:
                    problems.append(f"{path}: kernel imports {target}")
                elif room not in ALLOWED:
                    problems.append(f"{path}: {room} has no row in the table")
                elif ALLOWED[room] is not None and target not in ALLOWED[room]:
                    problems.append(f"{path}: {room} imports {target}")
    assert problems == [], "\n".join(problems)


def test_no_module_imports_a_private_name_from_another_package():
    problems = []
    for path, room, tree in _modules():
        for node in ast.walk(tree):
            for module, names in _imported(path, node):
                if _room(module) not in (None, room):
                    problems += [f"{path}: {module}.{n}" for n in names if n.startswith("_")]
                problems += [
                    f"{path}: {module}"
                    for part in module.split(".")[2:3]
                    if part.startswith("_") and _room(module) not in (None, room)
                ]
    assert problems == [], "\n".join(problems)


def _reads_environment(node: ast.AST) -> bool:
    """os.environ[...] / os.environ.get(...) / os.getenv(...) / 'X' in os.environ (forwarding the whole
    environment to a child process, dict(os.environ, ...), is not reading a setting)."""

    def is_environ(n: ast.AST) -> bool:
        return (
            isinstance(n, ast.Attribute)
            and n.attr == "environ"
            and isinstance(n.value, ast.Name)
            and n.value.id == "os"
        )

    if isinstance(node, ast.Subscript) and is_environ(node.value):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        f = node.func
        if f.attr in ("get", "setdefault", "pop") and is_environ(f.value):
            return True
        if f.attr == "getenv" and isinstance(f.value, ast.Name) and f.value.id == "os":
            return True
    if isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
        return True
    return (
        isinstance(node, ast.ImportFrom)
        and node.module == "os"
        and any(a.name in ("environ", "getenv") for a in node.names)
    )


def test_only_the_composition_roots_read_the_environment():
    problems = []
    for path, _room_name, tree in _modules():
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(READS_ENVIRONMENT):
            continue
        problems += [f"{rel}:{n.lineno}" for n in ast.walk(tree) if _reads_environment(n)]
    assert problems == [], "\n".join(problems)


def test_importing_every_module_has_no_side_effects(tmp_path):
    code = """
import importlib, pkgutil, sys, threading, os
before = set(os.listdir('.'))
import truecost
for m in pkgutil.walk_packages(truecost.__path__, 'truecost.'):
    importlib.import_module(m.name)
assert threading.active_count() == 1, threading.enumerate()
heavy = [m for m in ('torch', 'sentence_transformers', 'safetensors', 'tokenizers', 'openai', 'anthropic') if m in sys.modules]
assert not heavy, heavy
assert set(os.listdir('.')) == before
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
