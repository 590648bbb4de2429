"""Curvature backends chosen by name: one object per probe point with a common interface.

:func:`make_curvature` builds, for one point ``x0`` of one probe set, an object that answers
every curvature question the estimate asks (gradient, top and bottom eigenpairs, trace,
quadratic forms) and counts the Hessian-vector products it spent. ``"native"`` is this
package's double-backward operator with thick-restart Lanczos; ``"pyhessian"`` runs PyHessian
0.1 (see :mod:`.pyhessian_backend`) for comparison with the tool the design names.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from kramers_callback._probe import ProbeLoss
from kramers_callback._validation import check_choice
from kramers_callback.curvature.hvp import HessianOperator
from kramers_callback.curvature.min_eigenpair import min_eigenpair
from kramers_callback.curvature.pyhessian_backend import PyHessianCurvature
from kramers_callback.curvature.results import EigenResult, TraceResult
from kramers_callback.curvature.top_eigenpairs import top_eigenpairs
from kramers_callback.curvature.trace import hutchinson_trace

BACKENDS = ("native", "pyhessian")


@runtime_checkable
class Curvature(Protocol):
    """What every backend offers at one point ``x0``."""

    name: str
    gradient: Tensor
    """``∇L(x0)`` on the probe set, ``Tensor[d]``."""

    @property
    def num_products(self) -> int:
        """Hessian-vector products made so far, all methods together."""
        ...

    def top_eigenpairs(
        self,
        k: int,
        *,
        init: Tensor | None = None,
        tol: float = 1e-3,
        max_products: int = 300,
        generator: torch.Generator | None = None,
    ) -> EigenResult: ...

    def min_eigenpair(
        self,
        *,
        init: Tensor | None = None,
        tol: float = 1e-3,
        max_products: int = 300,
        generator: torch.Generator | None = None,
        upper_bound: float | None = None,
    ) -> EigenResult: ...

    def trace(
        self,
        *,
        tol: float = 1e-2,
        min_samples: int = 10,
        max_samples: int = 200,
        generator: torch.Generator | None = None,
    ) -> TraceResult: ...

    def quadratic_form(self, V: Tensor) -> Tensor: ...

    def close(self) -> None: ...


class NativeCurvature:
    """The ``"native"`` backend: :class:`.HessianOperator` with :func:`.top_eigenpairs`,
    :func:`.min_eigenpair` and :func:`.hutchinson_trace`."""

    name = "native"

    def __init__(self, probe: ProbeLoss) -> None:
        self.operator = HessianOperator(probe)
        self.gradient = self.operator.gradient

    @property
    def num_products(self) -> int:
        return self.operator.num_products

    def top_eigenpairs(
        self,
        k: int,
        *,
        init: Tensor | None = None,
        tol: float = 1e-3,
        max_products: int = 300,
        generator: torch.Generator | None = None,
    ) -> EigenResult:
        """See :func:`.top_eigenpairs`."""
        return top_eigenpairs(
            self.operator, k, init=init, tol=tol, max_products=max_products, generator=generator
        )

    def min_eigenpair(
        self,
        *,
        init: Tensor | None = None,
        tol: float = 1e-3,
        max_products: int = 300,
        generator: torch.Generator | None = None,
        upper_bound: float | None = None,
    ) -> EigenResult:
        """See :func:`.min_eigenpair`."""
        return min_eigenpair(
            self.operator,
            init=init,
            tol=tol,
            max_products=max_products,
            generator=generator,
            upper_bound=upper_bound,
        )

    def trace(
        self,
        *,
        tol: float = 1e-2,
        min_samples: int = 10,
        max_samples: int = 200,
        generator: torch.Generator | None = None,
    ) -> TraceResult:
        """See :func:`.hutchinson_trace`."""
        return hutchinson_trace(
            self.operator,
            tol=tol,
            min_samples=min_samples,
            max_samples=max_samples,
            generator=generator,
        )

    def quadratic_form(self, V: Tensor) -> Tensor:
        """``[v_iᵀ H v_i]`` for the rows of ``V``; ``k`` products."""
        return self.operator.quadratic_form(V)

    def close(self) -> None:
        """Release the gradient graph."""
        self.operator.close()

    def __enter__(self) -> NativeCurvature:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
