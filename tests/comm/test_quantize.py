"""--quantize: NVFlare's quantizer on real model payloads (bytes as FOBS serialises them), the filter order in the
exported job, personal keys that never leave, and the GPU-only types refused without CUDA."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _payload(seed: int = 0) -> dict[str, np.ndarray]:
    """The prostate job's real global model as the server sends it (numpy, float32 weights + int64 buffers)."""
    import torch

    from src.config.tutorial import ProstateConfig
    from src.models.networks import ProstateUNet

    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in ProstateUNet(channels=ProstateConfig().channels).state_dict().items()}


def _shareable(data: dict, quantize: str):
    """The model through ``FloatQuantizer(quantize)`` (or none) as a Shareable, like a filter chain would."""
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_context import FLContext

    from src.comm.quantize import FloatQuantizer

    shareable = DXO(data_kind=DataKind.WEIGHTS, data=data).to_shareable()
    if quantize != "none":
        shareable = FloatQuantizer(quantization_type=quantize).process(shareable, FLContext())
    return shareable


def _dequantize(shareable) -> dict:
    from nvflare.apis.dxo import from_shareable
    from nvflare.apis.fl_context import FLContext

    from src.comm.quantize import FloatDequantizer

    return from_shareable(FloatDequantizer().process(shareable, FLContext())).data


def _in_fresh_process(check) -> None:
    """Run ``check`` (a module-level function) in a spawned interpreter. Serialising a Shareable with FOBS in
    the pytest process (these three checks) left NVFlare state behind that broke the FLARE API login of the POC
    tests run later in the same process (its admin messages went out on the stream channel; the server refused
    them)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(check).result()  # an AssertionError in the child is raised here


def test_float16_halves_and_adaquant_shrinks_the_serialised_payload_and_both_round_trip():
    _in_fresh_process(check_float16_and_adaquant_sizes)


def check_float16_and_adaquant_sizes():
    from src.comm.wire import shareable_bytes

    data = _payload()
    none, _ = shareable_bytes(_shareable(dict(data), "none"))
    half = _shareable(dict(data), "float16")
    ada = _shareable(dict(data), "adaquant")
    half_bytes, ada_bytes = shareable_bytes(half)[0], shareable_bytes(ada)[0]
    assert none > sum(v.nbytes for v in data.values())  # the whole message: arrays plus NVFlare's encoding
    assert 0.45 < half_bytes / none < 0.6, (half_bytes, none)
    assert ada_bytes < half_bytes, (ada_bytes, half_bytes)
    for shareable, tol in ((half, 1e-3), (ada, 0.05)):
        back = _dequantize(shareable)
        assert set(back) == set(data)
        for k, v in data.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
            if v.dtype.kind == "f":
                np.testing.assert_allclose(back[k], v, atol=tol * max(1.0, float(np.abs(v).max())), err_msg=k)
            else:  # integer buffers (BatchNorm's num_batches_tracked) pass through untouched
                np.testing.assert_array_equal(back[k], v)


def test_quantizer_leaves_the_servers_own_model_untouched():
    data = _payload()
    before = {k: v.copy() for k, v in data.items()}
    _shareable(data, "adaquant")  # NVFlare's own quantizer rewrites the dict it is given
    assert all(data[k].dtype == before[k].dtype and np.array_equal(data[k], before[k]) for k in before)


def test_personal_keys_never_leave_with_quantization_on():
    """ExcludeVars runs before the quantizer on the site, so neither the arrays nor ADAQUANT's state (offsets,
    norms, compressed values) of a personal key is in the bytes the site sends."""
    _in_fresh_process(check_personal_keys_not_in_the_wire_bytes)


def check_personal_keys_not_in_the_wire_bytes():
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.filters.exclude_vars import ExcludeVars

    from src.comm.quantize import FloatQuantizer
    from src.comm.wire import serialised

    data = _payload()
    personal = [k for k in data if ".adn.N." in k or k.endswith(("running_mean", "running_var"))]
    assert personal
    from nvflare.apis.dxo import DXO, DataKind

    shareable = DXO(data_kind=DataKind.WEIGHTS, data=dict(data)).to_shareable()
    for flt in (ExcludeVars(exclude_vars=personal), FloatQuantizer(quantization_type="adaquant")):
        shareable = flt.process(shareable, FLContext())
    wire = serialised(shareable)
    leaked = [k for k in personal if k.encode() in wire]
    assert not leaked, leaked[:3]
    assert any(k.encode() in wire for k in data if k not in personal)  # the check can see a name that is sent


def _export(tmp_path, job, *extra):
    import importlib

    from jobs.common import execute

    module = importlib.import_module(f"jobs.{job}")
    out = tmp_path / "job"
    args = module.parse_args(["--env", "export", "--export-dir", str(out), "--n-clients", "2", "--tracking", "none",
                              *extra])
    execute(module.build_recipe(args), args)
    return {side: json.loads((out / "app" / "config" / f"config_fed_{side}.json").read_text())
            for side in ("server", "client")}


def _chains(config: dict, kind: str) -> list[tuple[list[str], list[str]]]:
    return [(sorted(c["tasks"]), [f["path"].rsplit(".", 1)[-1] for f in c["filters"]]) for c in config.get(kind, [])]


def test_export_puts_quantizers_at_both_ends_after_exclusion_and_counts_bytes_on_the_server(tmp_path):
    cfg = _export(tmp_path, "iopfl", "--algorithm", "fedbn", "--quantize", "adaquant")
    assert _chains(cfg["server"], "task_data_filters") == [(["train"], ["FloatQuantizer", "WireBytes"])]
    assert _chains(cfg["server"], "task_result_filters") == [(["submit_model", "train"],
                                                              ["WireBytes", "FloatDequantizer"])]
    assert _chains(cfg["client"], "task_data_filters") == [(["train"], ["FloatDequantizer"])]
    # FedBN's norms are excluded before the quantizer sees the update
    assert _chains(cfg["client"], "task_result_filters") == [(["submit_model", "train"],
                                                              ["ExcludeVars", "FloatQuantizer"])]
    quantizers = [f for c in cfg["client"]["task_result_filters"] for f in c["filters"]
                  if f["path"].endswith("FloatQuantizer")]
    assert quantizers[0]["path"] == "src.comm.quantize.FloatQuantizer"  # staged in custom/src (BYOC)
    assert quantizers[0]["args"]["quantization_type"] == "adaquant"  # NVFlare writes non-default args only


def test_default_job_counts_bytes_and_quantizes_nothing(tmp_path):
    cfg = _export(tmp_path, "prostate_fedavg")
    assert _chains(cfg["server"], "task_data_filters") == [(["train"], ["WireBytes"])]
    assert _chains(cfg["server"], "task_result_filters") == [(["submit_model", "train"], ["WireBytes"])]
    assert _chains(cfg["client"], "task_result_filters") == []  # the sites send exactly what they did before


def test_gpu_only_types_are_refused_without_cuda_and_unknown_types_always():
    import torch

    from jobs.prostate_fedavg import parse_args
    from src.comm.options import check_quantize

    check_quantize("float16")
    check_quantize("adaquant")
    with pytest.raises(ValueError, match="--quantize must be one of"):
        check_quantize("int3")
    if torch.cuda.is_available():
        check_quantize("blockwise8")
    else:
        with pytest.raises(ValueError, match="needs? a CUDA GPU|runs on a CUDA GPU"):
            check_quantize("blockwise8")
        with pytest.raises(SystemExit):
            parse_args(["--quantize", "normfloat4"])


def test_wire_row_names_site_task_round_and_counts_the_whole_message():
    _in_fresh_process(check_wire_row)


def check_wire_row():
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import ReservedHeaderKey
    from nvflare.app_common.app_constant import AppConstants

    from src.comm.wire import WireBytes, shareable_bytes
    from src.comm.wire_report import wire_summary, wire_table

    shareable = _shareable(_payload(), "none")
    shareable.set_header(AppConstants.CURRENT_ROUND, 3)
    shareable.set_header(ReservedHeaderKey.TASK_NAME, "train")
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, "site-7", private=False, sticky=False)
    ctx = FLContext()
    ctx.set_peer_context(peer)
    row = WireBytes("result").row(shareable, ctx)
    assert row["direction"] == "result" and row["task"] == "train" and row["round"] == 3
    assert row["site"] == "site-7"
    assert row["bytes"] == shareable_bytes(shareable)[0] > row["array_bytes"] > 0
    with pytest.raises(ValueError, match="direction"):
        WireBytes("sideways")
    rows = [{**row, "site": "site-7", "direction": d, "round": r, "bytes": b}
            for d, r, b in (("task", 0, 10), ("result", 0, 5), ("task", 1, 11), ("result", 1, 6))]
    assert wire_summary(rows) == {"site-7": {"task": [10, 11], "result": [5, 6]}}
    assert "| 1 | 11 | 6 |" in wire_table(wire_summary(rows))
