"""Metrics. MONAI 1.6's own Hausdorff code passes its deprecated ``always_return_as_numpy`` argument to
``get_mask_edges`` and warns on every process's first HD95: nothing a user can act on, so it is silenced here."""

import warnings

warnings.filterwarnings("ignore", message=r".*always_return_as_numpy.*", category=FutureWarning)
