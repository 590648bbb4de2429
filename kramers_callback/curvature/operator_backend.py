"""The shared body of the curvature backends: one operator, two eigensolvers, Hutchinson."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kramers_callback.curvature.results import EigenResult, TraceResult
from kramers_callback.curvature.trace import hutchinson_trace


class OperatorCurvature:
    """A backend made of a Hessian operator at ``x0`` and the eigensolvers that suit it.

    Subclasses set ``name``, ``solve_top`` (``(op, k, *, init, tol, max_products, generator)``)
    and ``solve_min`` (``(op, *, init, tol, max_products, generator, upper_bound)``); the trace
    is always :func:`.hutchinson_trace` on the operator's products, whose stopping rule uses
    ``|trace|``.
    """

    name: str
    solve_top: Callable[..., EigenResult]
    solve_min: Callable[..., EigenResult]

    def __init__(self, operator) -> None:
        self.operator = operator
        self.gradient = operator.gradient

    @property
    def num_products(self) -> int:
        """Hessian-vector products made so far, all methods together."""
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
        """The ``k`` largest eigenpairs (see the backend's ``solve_top``)."""
        return type(self).solve_top(
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
        """The smallest eigenpair (see the backend's ``solve_min``)."""
        return type(self).solve_min(
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
        """:func:`.hutchinson_trace` on the operator's products."""
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

    def __enter__(self) -> OperatorCurvature:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
