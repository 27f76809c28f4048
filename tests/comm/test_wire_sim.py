"""Bytes on the wire in real simulator runs: the summary carries them both ways, and --quantize float16 halves
them against an unquantized run measured in the same test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _run(prostate_data, workspace: Path, quantize: str) -> dict:
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args
    from src.reporting.summary import report

    args = parse_args(["--n-clients", "2", "--num-rounds", "1", "--local-epochs", "1", "--tracking", "none",
                       "--no-cross-site-eval", "--quantize", quantize, "--seed", "0",
                       "--data-root", str(prostate_data["data_root"]),
                       "--datalist-dir", str(prostate_data["datalist_dir"]), "--workspace", str(workspace)])
    return report(execute(build_recipe(args), args), "val_dice", quiet=True, publish=False)


def _model_bytes() -> int:

    from src.config.tutorial import ProstateConfig
    from src.models.networks import ProstateUNet

    return sum(v.numel() * v.element_size() for v in ProstateUNet(channels=ProstateConfig().channels)
               .state_dict().values())


def _check_summary(summary: dict) -> dict:
    wire = summary["wire_bytes"]
    assert set(wire) == {"site-1", "site-2"}
    for site, dirs in wire.items():
        assert len(dirs["task"]) == 1 and len(dirs["result"]) == 1, (site, dirs)
        assert dirs["task"][0] > 0 and dirs["result"][0] > 0, (site, dirs)
    # the same figures in the files the run leaves: summary.json and summary.md
    server = Path(summary["server_dir"])
    assert json.loads((server / "summary.json").read_text())["wire_bytes"] == wire
    assert "Bytes on the wire per round" in (server / "summary.md").read_text()
    assert len(summary["rounds"]["site-1"]["val_dice"]) == 1  # the round trained and scored after dequantization
    return wire


@pytest.mark.sim
def test_float16_run_sends_about_half_the_model_both_ways(prostate_data, tmp_path):
    wire = _check_summary(_run(prostate_data, tmp_path / "ws", "float16"))
    full = _model_bytes()  # float32 weights + int64 buffers, what an unquantized message carries at least
    for site, dirs in wire.items():
        for d in ("task", "result"):
            assert 0.45 < dirs[d][0] / full < 0.6, (site, d, dirs[d][0], full)


@pytest.mark.sim
@pytest.mark.slow
def test_float16_halves_the_site_to_server_bytes_against_none_in_the_same_test(prostate_data, tmp_path):
    none = _check_summary(_run(prostate_data, tmp_path / "none", "none"))
    half = _check_summary(_run(prostate_data, tmp_path / "half", "float16"))
    full = _model_bytes()
    for site in ("site-1", "site-2"):
        assert 1.0 <= none[site]["result"][0] / full < 1.1, none[site]  # the whole model plus NVFlare's encoding
        assert none[site]["task"][0] >= full
        ratio = half[site]["result"][0] / none[site]["result"][0]
        assert 0.45 < ratio < 0.6, (site, ratio)
        assert 0.45 < half[site]["task"][0] / none[site]["task"][0] < 0.6, site
