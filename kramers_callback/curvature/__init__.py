"""Curvature of the probe-set loss (docs/theory.md section 8): Hessian-vector products, extreme
eigenpairs (both ends from one Lanczos run), Hutchinson and Hutch++ traces, and the
``"native"`` / ``"pyhessian"`` backends."""

from kramers_callback.curvature.backends import (
    BACKENDS,
    Curvature,
    NativeCurvature,
    make_curvature,
)
from kramers_callback.curvature.hvp import CurvatureOperator, HessianOperator
from kramers_callback.curvature.min_eigenpair import min_eigenpair
from kramers_callback.curvature.pyhessian_backend import PyHessianCurvature, PyHessianOperator
from kramers_callback.curvature.results import EigenResult, KrylovBasis, SpectrumEnds, TraceResult
from kramers_callback.curvature.spectrum_ends import spectrum_ends
from kramers_callback.curvature.top_eigenpairs import top_eigenpairs
from kramers_callback.curvature.trace import deflated_hutchinson_trace, hutchinson_trace

__all__ = [
    "BACKENDS",
    "Curvature",
    "CurvatureOperator",
    "EigenResult",
    "HessianOperator",
    "KrylovBasis",
    "NativeCurvature",
    "PyHessianCurvature",
    "PyHessianOperator",
    "SpectrumEnds",
    "TraceResult",
    "deflated_hutchinson_trace",
    "hutchinson_trace",
    "make_curvature",
    "min_eigenpair",
    "spectrum_ends",
    "top_eigenpairs",
]
