"""kramers-callback: Kramers escape rates that drive SGD's temperature, batch size and stop."""

from kramers_callback._probe import BatchMeanLoss
from kramers_callback.callback import KramersCallback
from kramers_callback.estimate import (
    KramersEstimate,
    NonFiniteLossError,
    Pathway,
    PathwayStatus,
    check_top_k,
    estimate,
    validate_estimate_options,
)
from kramers_callback.lr_scheduler import KramersAnnealingLR

__all__ = [
    "BatchMeanLoss",
    "KramersAnnealingLR",
    "KramersCallback",
    "KramersEstimate",
    "NonFiniteLossError",
    "Pathway",
    "PathwayStatus",
    "check_top_k",
    "estimate",
    "validate_estimate_options",
]

__version__ = "0.1.0"
