"""Add a finished job's result table to its TensorBoard log (TensorBoard's TEXT tab), beside the per-site scalars."""

from __future__ import annotations

from pathlib import Path

__all__ = ["publish_table"]

RESULTS_RUN = "results"


def publish_table(server_dir: str | Path, text: str, step: int = 0) -> Path:
    """Write ``text`` (markdown) as the ``results/summary`` text summary under ``<server_dir>/tb_events/results``.

    Args:
        server_dir: the job's server folder holding ``tb_events/``.
        text: the per-site and cross-site tables (markdown).
        step: the step the text is shown at (the last round).
    """
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(server_dir) / "tb_events" / RESULTS_RUN
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_text("results/summary", text, global_step=step)
    return log_dir
