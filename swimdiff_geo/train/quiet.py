"""Keep Lightning's messages that say nothing about the user's run out of the training log."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Lightning's rank-zero info messages go through this logger.
_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropAdvertisement(logging.Filter):
    """Drop Lightning's "💡 Tip: ... try installing litlogger" line (an advertisement)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


@contextmanager
def lightning_noise_filtered(run_dir_is_ours: bool) -> Iterator[None]:
    """Silence three Lightning messages while a Trainer is built and run.

    - the litlogger advertisement printed when a Trainer is built;
    - ``isinstance(treespec, LeafSpec) is deprecated``: Lightning's own use of a torch API;
    - ``Checkpoint directory ... exists and is not empty``, but only when ``run_dir_is_ours``:
      our run folder holds its ``logs/`` before the first checkpoint, and with ``--resume`` the
      previous checkpoints by design. Otherwise (a folder with someone's checkpoints, no
      ``--resume``) the warning stays: the run will overwrite them.
    """
    advert = _DropAdvertisement()
    logger = logging.getLogger(_RANK_ZERO_LOGGER)
    logger.addFilter(advert)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            if run_dir_is_ours:
                warnings.filterwarnings(
                    "ignore", message=r"Checkpoint directory .* exists and is not empty"
                )
            yield
    finally:
        logger.removeFilter(advert)
