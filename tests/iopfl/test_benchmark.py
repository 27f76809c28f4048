"""The one-command comparison on tiny data: every method appears in the JSON, markdown, plot and the CSVs."""

import json

import pytest


@pytest.mark.sim
def test_compare_writes_every_method(tmp_path):
    from benchmarks.iopfl_compare import CLAIMS, main
    from benchmarks.stats import SCORE_COLUMNS, read_rows

    out = tmp_path / "cmp"
    assert main(["--quick", "--out", str(out), "--data-root", str(tmp_path / "data" / "mp"), "--datalist-dir",
                 str(tmp_path / "lists"), "--rounds", "1", "--tta-passes", "1", "--features", "4", "8", "16",
                 "--n-cases", "3", "--size", "32"]) == 0
    result = json.loads((out / "iopfl_compare.json").read_text())
    inside = result["inside"]
    for method in ("FedAvg global (last)", "IOP-FL personalised (best)", "FedProx global (last)",
                   "FedBN site model (last)", "local (last)", "centralised (last)"):
        assert set(inside[method]) == set(result["meta"]["sites"]), method
    assert set(result["outside"]) == {"global", "uniform_average", "bn_adapt", "routing_first", "routing_last"}
    assert (out / "iopfl_compare.md").read_text().count("|") > 50 and (out / "iopfl_compare.png").stat().st_size

    # one CSV row per (setting, site, method, seed, metric); --quick runs seeds 0 and 1 on the same data
    rows = read_rows(out / "iopfl_compare.csv")
    assert tuple(rows[0]) == SCORE_COLUMNS
    keys = [(r["setting"], r["site"], r["method"], r["seed"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))
    sites, seeds = result["meta"]["sites"], {0, 1}
    inside_rows = [r for r in rows if r["setting"] == "inside"]
    assert {r["seed"] for r in rows} == seeds and {r["site"] for r in inside_rows} == set(sites)
    assert len(inside_rows) == len(inside) * len(sites) * len(seeds) * 3  # dice, hd95, dice2d
    assert all(r["n"] == 1 for r in inside_rows)  # --quick: one test volume per site
    volumes = read_rows(out / "iopfl_compare_volumes.csv")
    ood = [r for r in volumes if r["setting"] == "outside"]
    assert {r["site"] for r in ood} == {result["meta"]["settings"]["ood_test"]} and len({r["case"] for r in ood}) == 3
    # every claimed method was measured, and every ordering got a verdict in the markdown
    methods = {r["method"] for r in rows}
    assert all(c.better in methods and c.worse in methods for c in CLAIMS)
    md = (out / "iopfl_compare.md").read_text()
    assert md.count("**yes**") + md.count("**no**") + md.count("**within noise**") == len(CLAIMS)
    # what a round costs, by NVFlare's serialisation of each method's messages (benchmarks/_wire.py)
    wire = result["meta"]["bytes_per_round"]
    assert set(wire) == {"iopfl", "fedprox", "fedbn"}
    tasks = {m: b["server_to_site"] for m, b in wire.items()}
    assert len(set(tasks.values())) == 1 and tasks["iopfl"] > 0  # every server sends its whole model
    assert 0 < wire["fedbn"]["site_to_server"] < wire["fedprox"]["site_to_server"]  # FedBN keeps its norms
    assert "Communication per site and round (bytes on the wire)" in md

def test_options_follow_the_job_names_and_keep_the_old_aliases():
    from benchmarks.iopfl_compare import QUICK, parse_args

    a = parse_args(["--num-rounds", "7", "--ood-test", "UCL"])
    assert (a.rounds, a.ood_site, a.seeds, a.n_test) == (7, "UCL", [0, 1, 2], 4)
    old = parse_args(["--rounds", "3", "--ood-site", "HK", "--seed", "5"])
    assert (old.rounds, old.ood_site, old.seeds) == (3, "HK", [5])
    quick = parse_args(["--quick", "--num-rounds", "2"])
    assert quick.rounds == 2 and quick.seeds == QUICK["seeds"] and quick.matrix == QUICK["matrix"]  # explicit wins
