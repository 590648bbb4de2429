"""Curvature backends chosen by name: one object per probe point with a common interface.

:func:`make_curvature` builds, for one point ``x0`` of one probe set, an object that answers
every curvature question the estimate asks (gradient, top and bottom eigenpairs, trace,
quadratic forms) and counts the Hessian-vector products it spent. ``"native"`` is this
package's double-backward operator with thick-restart Lanczos, which finds both ends of the
spectrum in one run (:mod:`.spectrum_ends`); ``"pyhessian"`` runs PyHessian 0.1 (see
:mod:`.pyhessian_backend`) for comparison with the tool the design names, and keeps two runs.
"""

from __future__ import annotations

from kramers_callback._probe import ProbeLoss
from kramers_callback._validation import check_choice
from kramers_callback.curvature.hvp import HessianOperator
from kramers_callback.curvature.min_eigenpair import min_eigenpair
from kramers_callback.curvature.operator_backend import OperatorCurvature
from kramers_callback.curvature.pyhessian_backend import PyHessianCurvature
from kramers_callback.curvature.spectrum_ends import spectrum_ends
from kramers_callback.curvature.top_eigenpairs import top_eigenpairs

BACKENDS = ("native", "pyhessian")


Curvature = OperatorCurvature
"""What every backend offers at one point ``x0`` (see :class:`.OperatorCurvature`)."""


class NativeCurvature(OperatorCurvature):
    """The ``"native"`` backend: :class:`.HessianOperator` with :func:`.top_eigenpairs`,
    :func:`.min_eigenpair`, :func:`.spectrum_ends` (both in one Lanczos run) and the
    Hutchinson / Hutch++ traces."""

    name = "native"
    solve_top = staticmethod(top_eigenpairs)
    solve_min = staticmethod(min_eigenpair)
    solve_ends = staticmethod(spectrum_ends)

    def __init__(self, probe: ProbeLoss) -> None:
        super().__init__(HessianOperator(probe))


def make_curvature(name: str, probe: ProbeLoss) -> Curvature:
    """The curvature backend ``name`` (``"native"`` or ``"pyhessian"``) at ``probe.x0``.

    Cost: building either is one forward and one backward pass over the probe set, whose
    graph stays alive until ``close()`` (or use it as a context manager).

    Raises:
        ValueError: ``backend must be one of ['native', 'pyhessian'], got …``.
    """
    check_choice("backend", name, BACKENDS)
    if name == "pyhessian":
        return PyHessianCurvature(probe)
    return NativeCurvature(probe)
