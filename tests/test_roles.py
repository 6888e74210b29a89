"""Key roles as types: the server's PublicContext cannot decrypt and has no path to a secret key."""

from __future__ import annotations

import ast
import contextlib
import gc
import types
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as seal
import torch

import encrypted_torch as et
from encrypted_torch.ckks import secret as secret_module
from encrypted_torch.ckks.seal_backend import SealKeyOwner

PACKAGE = Path(et.__file__).parent
ROOT = PACKAGE.parent

# Client-side modules may hold or import the secret key's context.
CLIENT_SIDE = {"encrypted_torch/ckks/secret.py", "encrypted_torch/__init__.py"}
# encrypted_torch/ckks/seal_backend.py defines SealKeyOwner (keygen, decrypt) next to the server's
# SealBackend: it is one module, but only ckks/secret.py may construct the key owner (checked below).
KEY_OWNER_USERS = {"encrypted_torch/ckks/secret.py", "encrypted_torch/ckks/seal_backend.py"}
# The HETAL application package runs both roles in one process by design (hetal/pipeline.py
# creates the SecretContext); no other module may import it, so the server-side code stays out of
# reach of SecretContext.
BOTH_ROLES = "encrypted_torch/hetal/"
# The testing kit decrypts results for its users' tests: key-owner code that nothing else imports.
TESTING = "encrypted_torch/testing/"


def _is_client(rel: str) -> bool:
    return rel in CLIENT_SIDE or rel.startswith(("encrypted_torch/client", BOTH_ROLES, TESTING))


def _modules() -> dict[str, ast.Module]:
    return {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text(), filename=str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _dotted(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _file_of(dotted: str, files: set[str]) -> str | None:
    base = dotted.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if candidate in files:
            return candidate
    return None


def _imports(rel: str, tree: ast.Module, files: set[str]) -> tuple[set[str], set[str]]:
    """(package files this module imports, the names it imports), lazy imports included."""
    package = _dotted(rel) if rel.endswith("__init__.py") else _dotted(rel).rpartition(".")[0]
    targets, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                targets.add(_file_of(alias.name, files))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            targets.add(_file_of(module, files))
            for alias in node.names:
                names.add(alias.name)
                targets.add(_file_of(f"{module}.{alias.name}", files))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return targets - {None}, names


def test_import_boundary():
    """No server-side module imports SecretContext, ckks.secret or a client module, directly or
    through the modules it imports (lazy imports inside functions count too)."""
    trees = _modules()
    files = set(trees)
    assert "encrypted_torch/ckks/secret.py" in files and "encrypted_torch/tensor/enctensor.py" in files
    graph, violations = {}, []
    for rel, tree in trees.items():
        targets, names = _imports(rel, tree, files)
        graph[rel] = targets - {"encrypted_torch/__init__.py"}  # the package root re-exports
        if _is_client(rel):
            continue
        bad = {n for n in names if n == "SecretContext" or n == "secret" or n.endswith(".secret")}
        used = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and n.attr in ("SecretContext", "SealKeyOwner")
                or isinstance(n, ast.Name) and n.id in ("SecretContext", "SealKeyOwner")}
        if bad or (used and rel not in KEY_OWNER_USERS):
            violations.append(f"{rel}: {sorted(bad | used)}")
    assert not violations, "server-side modules reach the secret key: " + "; ".join(violations)

    for rel in files:
        if _is_client(rel):
            continue
        seen, stack = set(), [rel]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        reached = sorted(m for m in seen if _is_client(m))
        assert not reached, f"{rel} imports client-side code {reached}"


def test_import_boundary_catches_a_violation():
    """The checker itself: a server module importing SecretContext lazily is flagged."""
    tree = ast.parse("def f():\n    from ..ckks.secret import SecretContext\n")
    files = {"encrypted_torch/ckks/secret.py", "encrypted_torch/nn/x.py"}
    targets, names = _imports("encrypted_torch/nn/x.py", tree, files)
    assert targets == {"encrypted_torch/ckks/secret.py"} and "SecretContext" in names
    targets, names = _imports("encrypted_torch/nn/x.py", ast.parse("import encrypted_torch.ckks.secret"),
                              files)
    assert targets == {"encrypted_torch/ckks/secret.py"}


def _reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through instance state, containers, bound methods and
    closures (not through classes, modules or a function's globals, which reach everything)."""
    seen, out, stack = set(), [], [root]
    skip = (type, types.ModuleType, types.BuiltinFunctionType, str, bytes, int, float, bool, type(None))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, types.FunctionType):
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    stack.append(cell.cell_contents)
            stack.extend(obj.__defaults__ or ())
        elif isinstance(obj, types.MethodType):
            stack.extend((obj.__self__, obj.__func__))
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray):
            continue
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            stack.extend(gc.get_referents(obj))
    return out


def test_public_context_holds_no_secret(seal_ctx):
    pub = seal_ctx.public()
    objs = _reachable(pub)
    assert any(isinstance(o, seal.GaloisKeys) for o in objs)  # the walk does reach the keys
    assert any(isinstance(o, seal.PublicKey) for o in objs)
    forbidden = (seal.SecretKey, seal.Decryptor, seal.KeyGenerator, SealKeyOwner, et.SecretContext,
                 secret_module._PlainKeyOwner)
    assert not [type(o).__name__ for o in objs if isinstance(o, forbidden)]
    assert not hasattr(pub, "_owner") and pub.holds_secret_key is False
    # Nor do its bytes: no secret-key section, and the secret key's bytes appear nowhere.
    sk_bytes = seal_ctx._owner.secret_bytes()
    blob = pub.to_bytes()
    assert b"secret_key" not in blob and sk_bytes[16:80] not in blob
    for part in pub._raw_parts.values():
        assert sk_bytes[16:80] not in part


def test_plain_public_context_holds_no_token_owner(plain_ctx):
    objs = _reachable(plain_ctx.public())
    assert not [o for o in objs if isinstance(o, (secret_module._PlainKeyOwner, et.SecretContext))]


def test_public_context_cannot_decrypt(any_ctx):
    pub = any_ctx.public()
    x = et.encrypt(torch.ones(2, 2), pub)
    with pytest.raises(et.KeyRoleError, match="cannot decrypt"):
        pub.decrypt(x)
    with pytest.raises(et.KeyRoleError):
        pub.decrypt(x.ciphers()[0])
    assert not hasattr(pub, "refresh") and not isinstance(pub, et.Refresher)
    assert isinstance(any_ctx, et.Refresher)


def test_roles_are_unrelated_classes():
    assert not issubclass(et.PublicContext, et.SecretContext)
    assert not issubclass(et.SecretContext, et.PublicContext)
    assert et.SecretContext.holds_secret_key and not et.PublicContext.holds_secret_key


def test_public_from_secret_bytes_raises_key_role_error(any_ctx):
    with pytest.raises(et.KeyRoleError, match="secret"):
        et.PublicContext.from_bytes(any_ctx.to_bytes())


def test_public_bytes_with_a_smuggled_secret_key_are_refused(any_ctx):
    from encrypted_torch.ckks import serialize

    sections = serialize.unpack(any_ctx.public_bytes(), "public_context")
    sections["secret_key"] = any_ctx._owner.secret_bytes()
    with pytest.raises(et.KeyRoleError, match="secret key"):
        et.PublicContext.from_bytes(serialize.pack("public_context", sections))


def test_public_round_trip_keeps_the_role(any_ctx):
    pub = et.PublicContext.from_bytes(any_ctx.public_bytes())
    assert isinstance(pub, et.PublicContext) and pub.fingerprint == any_ctx.fingerprint
    c = pub.encrypt_vector(np.linspace(-1, 1, pub.slots))  # the server can encrypt
    np.testing.assert_allclose(any_ctx.decrypt_vector(c).real, np.linspace(-1, 1, pub.slots), atol=1e-6)


@pytest.fixture(scope="module")
def other_seal_ctx() -> et.SecretContext:
    return et.SecretContext.create("test", rotations=[1], backend="seal")


@pytest.mark.parametrize("backend", ["plain", "seal"])
def test_decrypting_with_the_wrong_key(backend, plain_ctx, seal_ctx, other_seal_ctx):
    mine = plain_ctx if backend == "plain" else seal_ctx
    other = et.SecretContext.create("test", backend="plain") if backend == "plain" else other_seal_ctx
    assert other.fingerprint != mine.fingerprint
    x = et.encrypt(torch.ones(3, 3), mine)
    with pytest.raises(et.ContextMismatchError):
        other.decrypt(x)
    with pytest.raises(et.ContextMismatchError):
        other.decrypt(x.ciphers()[0])
    with pytest.raises(et.ContextMismatchError):
        other.refresh(x.ciphers())
