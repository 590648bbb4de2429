"""The shared body of the curvature backends: one operator, its eigensolvers, the trace."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kramers_callback.curvature.results import EigenResult, KrylovBasis, SpectrumEnds, TraceResult
from kramers_callback.curvature.trace import deflated_hutchinson_trace, hutchinson_trace


class OperatorCurvature:
    """A backend made of a Hessian operator at ``x0`` and the eigensolvers that suit it.

    Subclasses set ``name``, ``solve_top`` (``(op, k, *, init, tol, max_products, generator)``),
    ``solve_min`` (``(op, *, init, tol, max_products, generator, upper_bound)``) and
    ``solve_ends`` (``(op, k, *, top_init, bottom_init, tol, max_products, generator)``, both
    ends within one cap of ``max_products``); the trace is :func:`.hutchinson_trace` on the
    operator's products, or :func:`.deflated_hutchinson_trace` (Hutch++) given the basis of
    a :class:`.SpectrumEnds`. Both stop on ``|trace|``.
    """

    name: str
    solve_top: Callable[..., EigenResult]
    solve_min: Callable[..., EigenResult]
    solve_ends: Callable[..., SpectrumEnds]

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

    def spectrum_ends(
        self,
        k: int,
        *,
        top_init: Tensor | None = None,
        bottom_init: Tensor | None = None,
        tol: float = 1e-3,
        max_products: int = 300,
        generator: torch.Generator | None = None,
    ) -> SpectrumEnds:
        """The ``k`` largest and the smallest eigenpair, at most ``max_products`` products in
        all (see the backend's ``solve_ends``)."""
        return type(self).solve_ends(
            self.operator,
            k,
            top_init=top_init,
            bottom_init=bottom_init,
            tol=tol,
            max_products=max_products,
            generator=generator,
        )

    def trace(
        self,
        *,
        tol: float = 1e-2,
        min_samples: int = 10,
        max_samples: int = 200,
        generator: torch.Generator | None = None,
        basis: KrylovBasis | None = None,
    ) -> TraceResult:
        """:func:`.hutchinson_trace` on the operator's products; with ``basis`` (e.g.
        :attr:`.SpectrumEnds.basis`), :func:`.deflated_hutchinson_trace` on it."""
        options = {
            "tol": tol,
            "min_samples": min_samples,
            "max_samples": max_samples,
            "generator": generator,
        }
        if basis is not None:
            return deflated_hutchinson_trace(self.operator, basis, **options)
        return hutchinson_trace(self.operator, **options)

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
