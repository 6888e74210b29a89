"""The layers import one way: the client (key owner) never imports the server.

The client and the server share what both read (the job's schema and builders in training/job.py,
the wire protocol in protocol/); a client module importing server/ would lift the client above the
server it talks to. Every import counts, function-local ones included.
"""

import ast
from pathlib import Path

from test_structure import import_target

import encrypted_torch

ROOT = Path(encrypted_torch.__file__).resolve().parent
PACKAGE = ROOT.name


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The dotted names an import statement anywhere in ``tree`` loads (relative ones resolved)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = import_target(node, module, is_package)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            found.update(arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str))
    return found


def _reaches(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def test_client_does_not_import_the_server():
    server = f"{PACKAGE}.server"
    offenders = {}
    for path in sorted((ROOT / "client").rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        reached = _reaches(imported_modules(tree, module, path.name == "__init__.py"), server)
        if reached:
            offenders[module] = reached
    assert not offenders, f"client modules import the server: {offenders}"


def test_the_check_sees_lazy_and_relative_imports():
    """The checker itself: a function-local relative import, an absolute one and import_module count."""
    server = f"{PACKAGE}.server"
    lazy = ast.parse("def f():\n    from ..server.job import BUILDERS\n")
    assert _reaches(imported_modules(lazy, f"{PACKAGE}.client.policy", False), server)
    package_level = ast.parse("from .. import server\n")  # in client/__init__.py
    assert _reaches(imported_modules(package_level, f"{PACKAGE}.client", True), server)
    absolute = ast.parse("import encrypted_torch.server.app\n")
    assert _reaches(imported_modules(absolute, f"{PACKAGE}.client.remote", False), server)
    dynamic = ast.parse("importlib.import_module('encrypted_torch.server')\n")
    assert _reaches(imported_modules(dynamic, f"{PACKAGE}.client.remote", False), server)
    clean = ast.parse("from ..training.job import validate_job\n")
    assert not _reaches(imported_modules(clean, f"{PACKAGE}.client.policy", False), server)
