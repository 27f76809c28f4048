"""Progress lines and the simulator's logging configuration (console: progress + errors; files: everything)."""

from __future__ import annotations

import logging
import logging.config

from src.reporting.console import PROGRESS_LOGGER, RoundClock, nvflare_log_config, server_line, site_line


def test_site_line_reads_like_the_spec():
    line = site_line(2, 10, "site-2", {"train_loss": 0.4123, "val_dice_local": 0.75}, {"val_dice": 0.7312},
                     "val_dice", 12.3)
    assert line == "round 3/10  site-2  loss 0.412  val_dice 0.731 (global in) 0.750 (local)  12 s"


def test_nan_is_never_printed_as_a_result():
    line = site_line(0, 1, "site-1", {"train_loss": float("nan")}, {"val_auc": float("nan")}, "val_auc", 1)
    assert "nan" not in line and "n/a" in line


def test_server_line_has_mean_and_eta():
    times = iter([0.0, 10.0, 30.0])
    clock = RoundClock(clock=lambda: next(times))
    first = clock.round_done(0, 3, {"val_accuracy": 0.5, "train_loss": 1.0}, n_sites=2)
    assert first == "round 1/3  server  mean val_accuracy 0.500 (global in, 2 sites)  round 10 s  ETA 20 s"
    last = clock.round_done(2, 3, {"val_accuracy": 0.75}, n_sites=2)
    assert last.endswith("round 20 s  done")
    assert server_line(0, 2, None, None, 2, 5, 5).startswith("round 1/2  server  2 sites")


def test_log_config_shows_progress_and_errors_only(tmp_path, capsys):
    config = nvflare_log_config()
    for handler in config["handlers"].values():
        if "filename" in handler:
            handler["filename"] = str(tmp_path / handler["filename"])
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        logging.getLogger("ignite.engine.engine.SupervisedTrainer").info("Engine run resuming from iteration 0")
        logging.getLogger("nvflare.fuel.f3.cellnet").info("set transaction info: tx_id=1")
        logging.getLogger("nvflare.x").warning("ask to stop job")
        logging.getLogger(PROGRESS_LOGGER).info("round 1/2  site-1  loss 1.000  3 s")
        logging.getLogger("src.learners").error("site-1: cannot start the learner")
        for h in logging.getLogger().handlers:
            h.flush()
        out = capsys.readouterr().out
    finally:
        for h in root.handlers[:]:
            h.close()
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    assert "round 1/2  site-1  loss 1.000  3 s" in out
    assert "cannot start the learner" in out
    assert "Engine run" not in out and "tx_id" not in out and "ask to stop" not in out
    log = (tmp_path / "log.txt").read_text()
    assert "Engine run resuming" in log and "tx_id" in log and "round 1/2" in log  # everything is in the file


def test_verbose_is_nvflares_own_config():
    assert "progressHandler" not in nvflare_log_config(verbose=True)["handlers"]


def test_eta_leaves_the_start_up_round_out_once_there_is_another():
    times = iter([0.0, 100.0, 110.0])
    clock = RoundClock(clock=lambda: next(times))
    assert clock.round_done(0, 4, {}, n_sites=1).endswith("ETA 5:00")  # 100 s x 3 left: all it knows
    assert clock.round_done(1, 4, {}, n_sites=1).endswith("ETA 20 s")  # 10 s x 2 left


def test_a_workflow_without_round_numbers_still_gets_a_line():
    clock = RoundClock(clock=iter([0.0, 1.0]).__next__)
    assert clock.round_done(None, None, None).startswith("round 1/1  server  0 sites")
