"""Barriers along escape directions (docs/theory.md section 3).

- :func:`scan_for_barrier`: the default, a line scan ``φ(s) = L(x₀ + s·v)`` that brackets and
  refines the nearest maximum (``ΔL``, ``λ_b``, ``s*``), or reports why there is none.
- :func:`logdet_barrier` with :func:`stochastic_lanczos_logdet`: the seed's determinant
  heuristic (docs/theory.md section 3.2), a named alternative with no general validity (see its
  docstring).
"""

from kramers_callback.barriers.line_scan import (
    MAX_REFINE_EVALS,
    LineScanResult,
    PathwayStatus,
    initial_step_for,
    scan_for_barrier,
    untilted,
)
from kramers_callback.barriers.logdet import (
    LogDetResult,
    lanczos_quadrature,
    logdet_barrier,
    stochastic_lanczos_logdet,
)

__all__ = [
    "MAX_REFINE_EVALS",
    "LineScanResult",
    "LogDetResult",
    "PathwayStatus",
    "initial_step_for",
    "lanczos_quadrature",
    "logdet_barrier",
    "scan_for_barrier",
    "stochastic_lanczos_logdet",
    "untilted",
]
