"""Keeps DESIGN.md's import table true, and keeps import time free of side effects."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "truecost"
KERNEL = {"types", "errors", "clock", "pii"}
# room -> rooms it may import (besides the kernel and itself)
ALLOWED = {
    "pricing": set(),
    "ledger": {"pricing"},
    "tracking": {"pricing", "ledger"},
    "cache": set(),
    "routing": set(),
    "upstream": set(),
    "gateway": {"pricing", "ledger", "tracking", "cache", "routing", "upstream", "audit", "dashboard", "integrations"},
    "integrations": {"pricing", "ledger", "tracking"},
    "audit": {"ledger", "pricing", "cache", "routing"},
    "dashboard": {"audit"},
    "demo": {"pricing", "ledger", "tracking", "cache", "routing", "upstream", "gateway", "audit"},
    "servers": set(),
    "cli": None,  # may import anything
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "truecost" else None


def test_imports_flow_the_way_the_design_says():
    problems = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        room = rel[0] if len(rel) > 1 else Path(rel[0]).stem
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                target = _room(n)
                if target is None or target == room or target in KERNEL:
                    continue
                if target == "cli":
                    problems.append(f"{path}: imports cli")
                elif room in KERNEL:
                    problems.append(f"{path}: kernel imports {target}")
                elif ALLOWED.get(room) is not None and target not in ALLOWED[room]:
                    problems.append(f"{path}: {room} imports {target}")
    assert problems == []


def test_importing_every_module_has_no_side_effects(tmp_path):
    code = f"""
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
