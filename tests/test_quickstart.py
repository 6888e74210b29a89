"""The README's Quickstart runs as written (on the plaintext backend, fewer epochs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
LAYOUT_WORDS = ("unit=", "tiling", "rotation_steps", "rotations=", "c_pad", "unit_shape", "BlockLayout")


def quickstart_code() -> str:
    text = README.read_text()
    section = text[text.index("## Quickstart"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_quickstart_has_no_layout_words():
    code = quickstart_code()
    assert not [w for w in LAYOUT_WORDS if w in code]


def test_the_quickstart_runs_and_learns(capsys):
    code = quickstart_code()
    for old, new in [('et.SecretContext.create("fast")', 'et.SecretContext.create("fast", backend="plain")'),
                     ("epochs=4", "epochs=2"), ("Trainer(model, opt, key_owner=owner)",
                                                   "Trainer(model, opt, key_owner=owner, progress=False)")]:
        assert old in code, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    out = capsys.readouterr().out
    enc, plain = (float(v) for v in re.search(r"encrypted ([\d.]+), plain torch ([\d.]+)", out).groups())
    assert enc > 0.8 and plain > 0.8 and abs(enc - plain) <= 0.05, out
    assert scope["result"].epochs_run == 2 and "refreshes per encrypted step" in out


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
