"""benchmarks/scaling.py on tiny shapes (preset "test"), so the script cannot silently rot."""

from __future__ import annotations

from pathlib import Path

import pytest

scaling = pytest.importorskip("benchmarks.scaling")

TINY = scaling.Config(
    preset="test",
    series={"batch": [(32, 17, 2), (64, 17, 2)], "features": [(32, 17, 2), (32, 33, 2)],
            "classes": [(32, 17, 2), (32, 17, 4)]},
    measured=[(32, 17, 2)], cost_repeats=1, mem_rows=80, mem_batch=32, mem_features=17, mem_classes=2)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny run of the whole script, every stage in this process (no spawn: fast)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(scaling, "in_fresh_process", lambda fn, *args: fn(*args))
    try:
        return scaling.run_all(TINY, None, tmp_path_factory.mktemp("scaling"), save=lambda res: None)
    finally:
        mp.undo()


def test_counts_predictions_and_seal_step(results: dict) -> None:
    assert set(results["counts"]) == set(scaling.all_shapes(TINY)) and not results["skipped"]
    rows = scaling.rows_of(results)
    assert len(rows) == 6 and all(r["pred"] > 0 and r["ops"]["rotations"] > 0 for r in rows)
    by_c = {r["shape"]: r["ops"]["rotations"] for r in rows if r["series"] == "classes"}
    assert by_c[(32, 17, 4)] > by_c[(32, 17, 2)]  # more classes, more rotations
    (shape, m), = results["measured"].items()
    assert m["by_level"] == results["counts"][shape]  # the plaintext backend counts what SEAL runs
    assert m["cpu"] > 0 and m["peak_rss_mb"] > 0 and scaling.costs_of(results)


def test_memory_part(results: dict) -> None:
    c, s, h = (results["memory"][k] for k in ("client", "server", "hold"))
    assert c["batches"] == s["batches"] == h["batches"] == 3  # 80 rows in batches of 32
    assert c["data_bytes"] > 0 and c["ciphers_per_batch"] >= 2
    assert s["rss_keys_mb"] >= s["rss_start_mb"] > 0 and s["peak_stream_mb"] >= s["rss_keys_one_batch_mb"] > 0
    assert h["rss_all_mb"] > 0


def test_report_plot_and_rerender(results: dict, tmp_path: Path) -> None:
    scaling.write_outputs(results, tmp_path)
    text = (tmp_path / "scaling.md").read_text()
    assert "| batch | (64, 17, 2) |" in text and "peak RSS while streaming" in text and "`nproc`" in text
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    saved = tmp_path / "res.json"
    scaling.save_results(results, saved)
    assert scaling.render(scaling.load_results(saved)).split("`uptime`")[0] == text.split("`uptime`")[0]


def test_budget_skips_seal_stages_and_still_renders(tmp_path: Path) -> None:
    res = scaling.run_all(TINY, 0.0, tmp_path, save=lambda r: None)
    assert not res["measured"] and res["memory"] is None and len(res["skipped"]) == 2
    scaling.write_outputs(res, tmp_path)
    assert "Not run: SEAL step (32, 17, 2)" in (tmp_path / "scaling.md").read_text()
