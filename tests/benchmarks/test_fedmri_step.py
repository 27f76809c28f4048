"""The FedMRI step benchmark runs end to end in its --quick form and writes a consistent record."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fedmri_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("fedmri_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "fedmri_step.json"
    result = _load().main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["seconds"] == result["seconds"]
    assert all(v > 0 for v in saved["seconds"].values())
    ratios = saved["ratios"]
    per_repeat = saved["seconds_per_repeat"]
    assert ratios["fedmri_step_vs_unet_step"] == pytest.approx(
        per_repeat["fedmri_step"][0] / per_repeat["unet_step"][0]  # one repeat in --quick
    )
    comm = saved["communication_bytes_per_client_round"]
    assert comm["download_fedmri_all"] == 5 * comm["upload_encoder"]
    assert comm["upload_encoder"] == 4 * saved["parameters"]["encoder"]  # fp32
    assert "| U-Net train step" in capsys.readouterr().out


def test_bad_flag_is_rejected():
    with pytest.raises(SystemExit):
        _load().main(["--batch", "0"])


VARIANTS_SCRIPT = SCRIPT.parent / "fedmri_variants.py"


@pytest.mark.slow
def test_variants_quick_run_orders_downloads(tmp_path):
    spec = importlib.util.spec_from_file_location("fedmri_variants", VARIANTS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--out", str(tmp_path / "variants.json")])
    variants = result["variants"]
    download = {name: v["download_bytes_per_client"] for name, v in variants.items()}
    assert download["none"] < download["linear"] < download["all"]
    assert variants["linear"]["linear_loss_relative_gap_max"] >= 0  # the linear loss never undercuts the exact one
    for v in variants.values():
        assert len(v["per_site"]) == 4 and all(np.isfinite(m["val_psnr"]) for m in v["per_site"])
