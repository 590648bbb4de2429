"""Curvature of the probe-set loss (SPEC section 4): Hessian-vector products, extreme
eigenpairs, Hutchinson trace, and the ``"native"`` / ``"pyhessian"`` backends."""

from kramers_callback.curvature.backends import (
    BACKENDS,
    Curvature,
    NativeCurvature,
    make_curvature,
)
from kramers_callback.curvature.hvp import CurvatureOperator, HessianOperator
from kramers_callback.curvature.min_eigenpair import min_eigenpair
from kramers_callback.curvature.pyhessian_backend import PyHessianCurvature, PyHessianOperator
from kramers_callback.curvature.results import EigenResult, TraceResult
from kramers_callback.curvature.top_eigenpairs import top_eigenpairs
from kramers_callback.curvature.trace import hutchinson_trace

__all__ = [
    "BACKENDS",
    "Curvature",
    "CurvatureOperator",
    "EigenResult",
    "HessianOperator",
    "NativeCurvature",
    "PyHessianCurvature",
    "PyHessianOperator",
    "TraceResult",
    "hutchinson_trace",
    "make_curvature",
    "min_eigenpair",
    "top_eigenpairs",
]
