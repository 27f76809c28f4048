"""The benchmarks' shared timing and reporting helper."""

import json

import pytest

from benchmarks._report import interleaved_seconds, machine, median_seconds, seconds, write_report


def test_interleaved_seconds_round_robin_after_warmup():
    calls = []
    times = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3  # one warm-up round, then two timed rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        interleaved_seconds({"a": lambda: None}, repeats=0)


def test_median_and_single_timing():
    assert seconds(lambda: None) >= 0
    assert median_seconds(lambda: None, 3) >= 0
    with pytest.raises(ValueError, match="repeats"):
        median_seconds(lambda: None, 0)
    assert {"platform", "python", "cpu_count", "load_average_1m"} <= set(machine())


def test_write_report_writes_json_and_markdown_and_prints(tmp_path, capsys):
    out = write_report({"x": 1.5}, tmp_path / "deep" / "r.json", "| a |\n|---|", markdown=tmp_path / "deep" / "r.md")
    assert json.loads(out.read_text()) == {"x": 1.5}
    assert (tmp_path / "deep" / "r.md").read_text() == "| a |\n|---|\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json", "r.md"]  # no temporary file left
    printed = capsys.readouterr().out
    assert printed.startswith("| a |") and f"written: {out}" in printed
    with pytest.raises(TypeError):
        write_report({"x": object()}, tmp_path / "bad.json", "")
    assert not (tmp_path / "bad.json").exists() and list(tmp_path.glob(".bad.json*")) == []
