"""Client entry script of every job; NVFlare stages it as ``custom/jobs/fl_client.py`` beside ``custom/src``."""

import sys
from pathlib import Path

CUSTOM = Path(__file__).resolve().parents[1]  # the job's custom/ folder (the repo root when run from a checkout)
sys.path.insert(0, str(CUSTOM))

from src.learners.client_api import STAGED_CONFIG, main  # noqa: E402

if __name__ == "__main__":
    main(["--config", str(CUSTOM / STAGED_CONFIG)])
