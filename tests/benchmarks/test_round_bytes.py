"""benchmarks/_wire.RoundBytes: the in-process comparisons' bytes per round, by NVFlare's own serialisation."""

import numpy as np
import torch


def test_latest_round_is_measured_per_method_and_direction_with_nvflares_encoding():
    from benchmarks._wire import RoundBytes

    meter = RoundBytes()
    small, big = {"w": torch.zeros(10)}, {"w": torch.zeros(1000), "b": np.zeros(24, dtype=np.float32)}
    meter.task("fedavg", 1, small)  # an earlier round is replaced by the later one
    meter.task("fedavg", 2, big)
    meter.task("fedavg", 2, big)
    for n in (1, 3):  # two sites' results, different sizes: their mean is the figure
        meter.result("fedavg", 2, {"params": {"w": torch.zeros(1000 * n)}, "metrics": {"val_dice": 0.5},
                                   "meta": {"num_steps": 4}})
    meter.result("fedbn", 1, {"params": {"w": torch.zeros(100)}, "metrics": {}, "meta": {}})
    sizes = meter.measure()
    assert set(sizes) == {"fedavg", "fedbn"}
    raw_task = 4 * (1000 + 24)
    assert raw_task < sizes["fedavg"]["server_to_site"] < raw_task + 2000  # arrays + NVFlare's headers
    raw_up = 4 * 2000  # the mean of 4,000 and 12,000 bytes
    assert raw_up < sizes["fedavg"]["site_to_server"] < raw_up + 2000
    assert sizes["fedbn"]["server_to_site"] == 0.0 and sizes["fedbn"]["site_to_server"] > 400
    assert RoundBytes().measure() == {}


def test_report_lists_the_bytes_of_a_comparison():
    from benchmarks.report import _wire_lines

    lines = _wire_lines({"fedavg": {"server_to_site": 4_792_786.0, "site_to_server": 4_794_614.0}}, "##")
    assert lines[0] == "### Communication per site and round (bytes on the wire)"
    assert "| fedavg | 4,792,786 | 4,794,614 |" in lines
    assert _wire_lines({}, "##") == []
