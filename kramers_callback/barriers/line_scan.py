"""Line scans for barriers along escape directions (SPEC section 4). Owned by the barriers work."""

from __future__ import annotations

import enum


class PathwayStatus(str, enum.Enum):
    """What the line scan along one escape direction found."""

    BARRIER = "barrier"
    """A local maximum was bracketed and refined: ``barrier``, ``barrier_curvature`` are set."""
    NO_BARRIER_WITHIN_REACH = "no_barrier_within_reach"
    """The loss rose by more than ``κ·T_v`` before any maximum: no escape on any horizon."""
    DOWNHILL = "downhill"
    """The loss falls along the direction (``λ₀ ≤ 0``): no activated escape, not a Kramers rate."""
    SCAN_LIMIT = "scan_limit"
    """The scan used its evaluation budget without bracketing a maximum or passing ``κ·T_v``."""
