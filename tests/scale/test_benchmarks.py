"""benchmarks/scale.py and benchmarks/fedavg_overhead.py run at their smallest settings and write their outputs
(no timing assertions: the figures depend on the machine). The simulator runs are slow; the default suite runs
the parsing/report parts and the P2 part of the overhead benchmark."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _fake_run(tmp_path: Path, n_sites: int, rounds: int) -> Path:
    result = tmp_path / "result"
    for s in range(1, n_sites + 1):
        lines = []
        for r in range(rounds):
            lines.append(f"2026-12-02 01:00:{10 * r + s:02d},000 - INFO - site-{s} round {r}: training started")
            lines.append(f"2026-12-02 01:00:{10 * r + s + 5:02d},500 - INFO - site-{s} round {r}: val_dice=0.1 "
                         f"(global) val_dice=0.2")
        (result / f"site-{s}").mkdir(parents=True)
        (result / f"site-{s}" / "log.txt").write_text("\n".join(lines) + "\n")
    return result


def test_round_times_from_site_logs(tmp_path):
    from benchmarks.scale import round_times

    times = round_times(_fake_run(tmp_path, 2, 3), 2, 3)
    assert times["round_seconds"] == pytest.approx([6.5, 10.0, 10.0])
    assert times["steady_round_seconds"] == pytest.approx(10.0)
    with pytest.raises(RuntimeError, match="incomplete"):
        round_times(tmp_path / "result", 3, 3)  # a site missing


def _row(job, n, per_round, total_mb):
    return {"job": job, "sites": n, "sim_workers": min(n, 2), "threads_per_site": 1, "steady_round_seconds": per_round,
            "round_seconds": [per_round * 2, per_round], "startup_seconds": 30.0, "shutdown_seconds": 5.0,
            "peak_rss_mb_site_max": 700.0, "peak_rss_mb_total": total_mb, "load_average": [1.0, 1.0, 1.0]}


def test_verdicts_markdown_and_plot(tmp_path):
    from benchmarks.scale import markdown, plot, verdicts

    rows = [_row("mednist", 2, 4.0, 2000.0), _row("mednist", 4, 8.0, 3000.0), _row("mednist", 16, 40.0, 30000.0),
            _row("prostate2d", 2, 2.0, 2000.0), _row("prostate2d", 16, 15.0, 5000.0)]
    v = verdicts(rows, cores=2)
    assert v["mednist"]["no_worse_than_linear"] is False and v["mednist"]["fits_24gb"] is False
    assert v["prostate2d"]["no_worse_than_linear"] is True and v["prostate2d"]["fits_24gb"] is True
    text = markdown(rows, {"mednist": {"parameters": 10, "model_optimiser_mb": 1.0, "data_cache_mb": 0.5}}, 600.0, v,
                    {"rounds": 3, "cpu_cores": 2, "load_start": [1, 1, 1], "load_end": [2, 2, 2]})
    assert "| mednist | 16 | 2 x 1 |" in text and "does NOT fit" in text
    plot(rows, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 1000


def test_tree_sampler_sees_the_child_processes():
    from benchmarks.scale import TreeSampler

    proc = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 * 2**20); time.sleep(3)"])
    sampler = TreeSampler(proc.pid, interval=0.1)
    sampler.start()
    proc.wait(30)
    sampler.stop.set()
    sampler.join(5)
    assert sampler.peak_total > 50 * 2**20


@pytest.mark.slow
def test_overhead_p2_at_the_smallest_setting_writes_its_outputs(tmp_path):
    from benchmarks.fedavg_overhead import main

    assert main(["--quick", "--parts", "p2", "--sites", "1", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "fedavg_overhead.json").read_text())
    assert out["P2_ratio"] > 0 and out["P2_profile_seconds"]["learner"]["total"] > 0
    assert "P2 learner throughput" in (tmp_path / "fedavg_overhead.md").read_text()


@pytest.mark.sim
@pytest.mark.slow
def test_overhead_quick_with_the_honest_p1(tmp_path):
    from benchmarks.fedavg_overhead import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "fedavg_overhead.json").read_text())
    for key in ("P1_ratio", "P1_pooled_ratio", "reference_startup_seconds", "reference_shutdown_seconds",
                "simulator_startup_seconds", "simulator_shutdown_seconds"):
        assert out[key] > 0, key


@pytest.mark.sim
@pytest.mark.slow
def test_scale_quick_writes_json_markdown_and_plot(tmp_path):
    from benchmarks.scale import main

    assert main(["--quick", "--sites", "1", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "scale.json").read_text())
    assert [r["sites"] for r in out["runs"]] == [1] and out["runs"][0]["peak_rss_mb_total"] > 0
    assert out["memory_per_site"]["prostate2d"]["parameters"] > 0
    assert (tmp_path / "scale.png").is_file() and (tmp_path / "scale.md").is_file()


def test_scale_never_replaces_a_work_folder_it_did_not_make(tmp_path):
    from benchmarks.scale import main

    mine = tmp_path / "work" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main(["--quick", "--out", str(tmp_path)])
    assert exc.value.code == 2 and mine.read_text() == "keep me"


@pytest.mark.parametrize("job", ["prostate2d", "mednist"])
def test_each_jobs_data_is_prepared_for_every_site_and_its_memory_broken_down(tmp_path, job):
    """The data each job of the sweep gets (the MedNIST part once failed only after the prostate sweep had run)."""
    from benchmarks.scale import prepare, site_breakdown

    data_root, lists = prepare(job, tmp_path / job, 3)
    assert sorted(p.name for p in lists.glob("site-*.json")) == ["site-1.json", "site-2.json", "site-3.json"]
    parts = site_breakdown(job, data_root, lists)
    assert all(v > 0 for k, v in parts.items() if k.endswith("_mb")), parts


def test_overhead_pairs_alternate_and_round_turnarounds_come_from_the_site_logs():
    from benchmarks.fedavg_overhead import interleaved, turnarounds

    assert interleaved(3) == ["sim", "ref", "ref", "sim", "sim", "ref"]
    assert interleaved(2, "learner", "plain") == ["learner", "plain", "plain", "learner"]
    events = [(10.0, "site-1", 0, "val_dice"), (11.0, "site-2", 0, "val_dice"),  # round 0 ends at 11.0
              (11.4, "site-2", 1, "training started"), (11.9, "site-1", 1, "training started"),
              (20.0, "site-1", 1, "val_dice"), (21.0, "site-2", 1, "val_dice"),
              (21.3, "site-1", 2, "training started"), (21.2, "site-2", 2, "training started")]
    assert [round(t, 3) for t in turnarounds(events, 3)] == [0.9, 0.3]
