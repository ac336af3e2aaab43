"""Fail if any function or method under a folder is longer than a limit (its ``def`` to its last line).

Usage: ``python tools/check_function_length.py deltalens --max-lines 60``
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def long_functions(root: Path, max_lines: int) -> list[tuple[int, str]]:
    """``(length, "path:line name")`` of every function longer than ``max_lines``, longest first."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > max_lines:
                    found.append((length, f"{path}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--max-lines", type=int, default=60)
    args = parser.parse_args()
    found = long_functions(args.root, args.max_lines)
    for length, where in found:
        print(f"{where}: {length} lines (max {args.max_lines})")
    print(f"{len(found)} functions over {args.max_lines} lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
