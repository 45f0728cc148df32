"""The shape DESIGN.md asks of src/: no function over 80 lines, no file over 500 (as formatted by ruff)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "truecost"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500


def test_no_function_over_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert long == [], "\n".join(long)


def test_no_file_over_500_lines():
    big = [
        f"{p.relative_to(SRC)} ({n} lines)"
        for p in sorted(SRC.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert big == [], "\n".join(big)
