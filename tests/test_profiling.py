"""Step breakdowns: nested sections charge exclusive time, and the parts add up."""

import time

from encrypted_torch.profiling import section, timing


def test_nested_sections_charge_exclusive_time():
    with timing() as t:
        with section("softmax"):
            time.sleep(0.02)
            with section("refresh"):
                time.sleep(0.03)
            time.sleep(0.01)
    assert 0.025 <= t["refresh"] < 0.06
    assert 0.025 <= t["softmax"] < 0.06
    assert set(t) == {"softmax", "refresh"}


def test_sections_outside_timing_cost_nothing():
    with section("matmul"):
        pass
    with timing() as t:
        pass
    assert dict(t) == {}
