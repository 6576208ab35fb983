"""trioraft.core must stay sans-I/O: no trio, clock, OS, sockets or global randomness."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import trioraft.core

FORBIDDEN = {"trio", "time", "os", "socket", "random", "asyncio", "threading", "subprocess"}
CORE_DIR = pathlib.Path(trioraft.core.__file__).parent


def _imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_sources_import_nothing_forbidden() -> None:
    files = sorted(CORE_DIR.rglob("*.py"))
    assert files, "no core sources found"
    offenders = {
        str(f.relative_to(CORE_DIR)): sorted(_imported_roots(f) & FORBIDDEN) for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_core_loads_no_forbidden_module() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import trioraft.core, pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(trioraft.core.__path__, 'trioraft.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(' '.join(sorted({'trio'} & set(sys.modules))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
