"""The simulator's parallelism (jobs.common.parallelism): site processes at once and torch threads per site from
the CPU cores, overridable, checked, and in the run's settings; and the swap mode's exactness (slow)."""

from pathlib import Path

import pytest
import torch


def _args(tmp_path, *extra):
    import jobs.mednist_fedavg as job

    return job.parse_args(["--data-root", str(tmp_path), "--datalist-dir", str(tmp_path), *extra])


@pytest.mark.parametrize("cores,mem_gb,sites,workers,threads", [
    (2, 64, 1, 1, 2), (2, 64, 2, 2, 1), (2, 64, 16, 16, 1), (16, 64, 4, 4, 4), (1, 64, 3, 3, 1),
    (2, 6, 16, 4, 1),   # 6 GB: 0.8 * 6144 / 1000 (MedNIST's memory per site) -> 4 processes, the sites taking turns
    (8, 1, 16, 8, 1),   # too little memory for even min(sites, cores): never fewer than that
])
def test_default_threads_never_outnumber_cores_beyond_the_processes(monkeypatch, tmp_path, cores, mem_gb, sites,
                                                                      workers, threads):
    import jobs.common as common

    monkeypatch.setattr("os.cpu_count", lambda: cores)
    monkeypatch.setattr(common, "_available_mb", lambda: mem_gb * 1024.0)
    args = _args(tmp_path, "--n-clients", str(sites))
    share = common.parallelism(args)
    assert share == {"cpu_cores": cores, "n_sites": sites, "sim_workers": workers, "threads_per_site": threads}
    assert share["sim_workers"] * share["threads_per_site"] <= max(cores, share["sim_workers"])
    assert common.common_config(args)["num_threads"] == threads


def test_one_launch_sees_one_choice_even_if_memory_changes(monkeypatch, tmp_path):
    import jobs.common as common

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(common, "_available_mb", lambda: 64 * 1024.0)
    args = _args(tmp_path, "--n-clients", "16")
    first = common.parallelism(args)
    monkeypatch.setattr(common, "_available_mb", lambda: 6 * 1024.0)  # e.g. the data cache filled the memory
    assert common.parallelism(args) == first and first["sim_workers"] == 16
    assert common.parallelism(_args(tmp_path, "--n-clients", "16"))["sim_workers"] == 4  # a new launch decides anew


def test_a_job_that_needs_more_memory_per_site_plans_with_its_own_figure(monkeypatch, tmp_path):
    import jobs.common as common
    import jobs.prostate_fedavg as prostate

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(common, "_available_mb", lambda: 12 * 1024.0)  # 0.8 x 12 GB = 9830 MB to plan with
    common_args = ["--data-root", str(tmp_path), "--datalist-dir", str(tmp_path), "--n-clients", "16"]
    default = common.parallelism(prostate.parse_args(common_args))["sim_workers"]
    mednist = common.parallelism(_args(tmp_path, "--n-clients", "16"))["sim_workers"]
    assert (default, mednist) == (int(9830.4 // common.SITE_MB_ESTIMATE), int(9830.4 // 1000)) == (12, 9)


def test_overrides_and_settings(monkeypatch, tmp_path):
    from jobs.common import parallelism
    from jobs.console import run_settings

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    args = _args(tmp_path, "--n-clients", "16", "--sim-workers", "16", "--threads", "3")
    assert parallelism(args)["sim_workers"] == 16 and parallelism(args)["threads_per_site"] == 3
    settings = run_settings(args)
    assert settings["sim_workers"] == 16 and settings["threads_per_site"] == 3 and settings["cpu_cores"] == 2


@pytest.mark.parametrize("bad", [["--sim-workers", "5"], ["--sim-workers", "-1"], ["--threads", "-2"]])
def test_bad_parallelism_is_refused(tmp_path, bad):
    with pytest.raises(SystemExit):
        _args(tmp_path, "--n-clients", "4", *bad)


def test_dead_worker_watchdog_only_when_every_site_has_its_own_process(monkeypatch, tmp_path):
    """With fewer worker processes than sites, a worker exits between a site's turns: not a death."""
    import shutil

    import jobs.mednist_fedavg as job

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    watch = {}
    for n, workers in ((3, "3"), (3, "2")):
        args = _args(tmp_path, "--n-clients", str(n), "--sim-workers", workers, "--tracking", "none",
                     "--workspace", str(tmp_path / "ws"))
        recipe = job.build_recipe(args)
        shutil.rmtree(recipe.fl_staging, ignore_errors=True)
        watch[workers] = recipe.controller_args["watch_sim_workers"]
    assert watch == {"3": True, "2": False}


def _global(result: Path) -> dict:
    path = next(result.rglob("app_server/FL_global_model.pt"))
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return saved.get("model", saved)


@pytest.mark.sim
@pytest.mark.slow
def test_sites_taking_turns_end_with_the_same_global_model_as_one_process_each(tmp_path_factory):
    """3 sites on 2 worker processes (each site's process restarts per turn and carries on from its saved
    state) end bit-for-bit where 3 processes (one per site, never restarted) end."""
    import jobs.mednist_fedavg as job
    from data_prep.mednist import split
    from data_prep.synthetic.mednist import generate
    from jobs.common import execute

    root = tmp_path_factory.mktemp("mednist3")
    generate(root, per_class=6, seed=0)
    split(root, n_sites=3, datalist_dir=root / "datalists", seed=0)
    results = {}
    for workers in (2, 3):
        args = job.parse_args(["--n-clients", "3", "--num-rounds", "2", "--batch-size", "8", "--tracking", "none",
                               "--no-cross-site-eval", "--data-root", str(root), "--datalist-dir",
                               str(root / "datalists"), "--workspace", str(root / f"ws{workers}"),
                               "--sim-workers", str(workers), "--threads", "1"])
        results[workers] = Path(execute(job.build_recipe(args), args))
    logs = "".join(p.read_text() for p in results[2].rglob("log.txt"))
    assert "carried on from its saved state" in logs
    a, b = _global(results[2]), _global(results[3])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
