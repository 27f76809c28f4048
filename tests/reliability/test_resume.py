"""--resume: a run stopped after round 2 of 4 and resumed ends where an uninterrupted run with the same seed ends."""

import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def _run(mednist_data, tmp_path, *extra):
    import jobs.mednist_fedavg as job
    from jobs.common import execute

    args = job.parse_args(["--n-clients", "2", "--batch-size", "8", "--no-cross-site-eval",
                           "--data-root", str(mednist_data["data_root"]),
                           "--datalist-dir", str(mednist_data["datalist_dir"]), "--workspace", str(tmp_path / "ws"),
                           *extra])
    return Path(execute(job.build_recipe(args), args))


def _global(result: Path) -> dict:
    path = next(result.rglob("app_server/FL_global_model.pt"))
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return saved.get("model", saved)


@pytest.fixture(scope="module")
def three_runs(mednist_data, tmp_path_factory):
    """2 rounds, then --resume to 4; and 4 uninterrupted rounds; same seed."""
    tmp_path = tmp_path_factory.mktemp("resume")
    _run(mednist_data, tmp_path, "--num-rounds", "2", "--run-id", "first", "--tracking", "both")
    runs = tmp_path / "ws" / "mednist_fedavg" / "runs"
    resumed = _run(mednist_data, tmp_path, "--num-rounds", "4", "--run-id", "resumed", "--resume",
                   str(runs / "first"), "--tracking", "both")
    whole = _run(mednist_data, tmp_path, "--num-rounds", "4", "--run-id", "whole", "--tracking", "tensorboard")
    return {"runs": runs, "resumed": resumed, "whole": whole, "store": tmp_path / "ws" / "mlruns" / "mlflow.db"}


def test_a_run_stopped_after_round_2_resumes_and_finishes_4_rounds(three_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs, resumed = three_runs["runs"], three_runs["resumed"]
    status = json.loads((runs / "resumed" / "run.json").read_text())
    assert status["status"] == "completed" and status["start_round"] == 2
    rounds = [json.loads(line)["round"] for line in next(resumed.rglob("round_metrics.jsonl")).read_text().split()]
    assert rounds == [2, 3]  # the resumed run ran the rounds that were left, numbered on
    site_logs = "".join(p.read_text() for p in resumed.rglob("log.txt"))
    assert "site-1: resumed from" in site_logs and "site-2: resumed from" in site_logs
    # the TensorBoard curve of each site runs over rounds 0..3 in the resumed run's store
    tb = next(resumed.rglob("tb_events"))
    events = EventAccumulator(str(tb / "site-1")).Reload()
    steps = sorted({e.step for t in events.Tags()["scalars"] if t.endswith("val_accuracy") for e in events.Scalars(t)})
    assert steps == [0, 1, 2, 3]


def test_the_resumed_run_ends_with_the_uninterrupted_runs_global_model(three_runs):
    a, b = _global(three_runs["resumed"]), _global(three_runs["whole"])
    assert set(a) == set(b)
    diff = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()}
    print(f"max |resumed - uninterrupted| over keys: {max(diff.values()):.3g}")
    assert all(torch.equal(a[k], b[k]) for k in a), {k: v for k, v in diff.items() if v}


def test_the_resumed_runs_mlflow_curves_continue_the_first_runs(three_runs):
    """One active MLflow run per site in the project store, with every round 0..3 once (the first run's rounds
    copied in, the first run soft-deleted), and run.json names it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{three_runs['store']}")
    experiment = client.get_experiment_by_name("mednist_fedavg")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("role") != "results"]
    recorded = json.loads((three_runs["runs"] / "resumed" / "run.json").read_text())["mlflow_runs"]
    assert sorted(recorded) == ["site-1", "site-2"]
    assert sorted(r.info.run_id for r in runs) == sorted(recorded.values())
    for site, run_id in recorded.items():
        keys = client.get_run(run_id).data.metrics
        assert keys, site
        for key in keys:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == [0, 1, 2, 3], (site, key, steps)
