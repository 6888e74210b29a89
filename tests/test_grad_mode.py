"""Grad mode as torch's: no_grad / enable_grad / set_grad_enabled nest, decorate, and are per thread."""

from __future__ import annotations

import threading

import torch

import encrypted_torch as et


def test_grad_mode_nests_like_torch(plain_ctx):
    x = et.encrypt(torch.ones(2, 3), plain_ctx, requires_grad=True)
    assert et.is_grad_enabled()
    with et.no_grad():
        assert not et.is_grad_enabled() and (x * 2.0).grad_fn is None
        with et.enable_grad():
            assert et.is_grad_enabled() and (x * 2.0).grad_fn is not None
        assert not et.is_grad_enabled()
        with et.set_grad_enabled(True):
            assert et.is_grad_enabled()
    assert et.is_grad_enabled() and (x * 2.0).grad_fn is not None


def test_no_grad_decorates_and_restores_on_error(plain_ctx):
    @et.no_grad()
    def inference() -> bool:
        return et.is_grad_enabled()

    assert inference() is False and et.is_grad_enabled()
    try:
        with et.no_grad():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert et.is_grad_enabled()


def test_grad_mode_is_per_thread():
    seen: list[bool] = []
    with et.no_grad():
        worker = threading.Thread(target=lambda: seen.append(et.is_grad_enabled()))
        worker.start()
        worker.join()
        assert not et.is_grad_enabled()
    assert seen == [True]  # a new thread starts recording, as in torch
