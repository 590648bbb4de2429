"""The ``"pyhessian"`` curvature backend: PyHessian 0.1 (Yao et al. 2020), its defects fenced off.

PyHessian (the package the design names) computes Hessian-vector products by double backward
through ``loss.backward(create_graph=True)`` and finds top eigenvalues by power iteration with
deflation. Used as is, it would hurt a user's run; this module wraps it so that none of that
reaches the user:

* It calls ``model.eval()`` and leaves graph-attached ``.grad`` on the parameters it is given.
  It is given a private :class:`FlatLossModule` instead: one flat ``nn.Parameter`` initialised
  to ``probe.x0`` whose forward ignores its input and returns ``probe.mean_loss(param)``, with
  ``criterion = lambda out, target: out``. Its ``eval()`` and ``.grad`` touch only that wrapper;
  :meth:`PyHessianOperator.close` frees the graph and breaks the ``.grad`` reference cycle.
  Working in the probe's ``x`` coordinates also makes a preconditioner ``scale`` transparent.
* It defaults to CUDA: the probe's device is passed instead.
* ``hessian.trace()`` stops when ``|Δmean| / (mean + 1e-6) < tol``, with the *signed* mean: on a
  negative trace it stops after two samples. Never called: :func:`.hutchinson_trace` runs on
  PyHessian's Hessian-vector product with a test on ``|mean|``.
* ``hessian.density()`` calls ``torch.eig``, removed from PyTorch: never called.
* ``hessian.eigenvalues()`` draws its start vectors from the global RNG, stops on the relative
  change of the eigenvalue (not a residual), and ranks by ``|λ|`` (power iteration), not by
  ``λ``. It runs inside ``torch.random.fork_rng`` seeded from the caller's generator; the
  residuals are computed afterwards to set ``converged`` truthfully; if it returns a negative
  eigenvalue, it is run again on ``H − σI`` so the pairs are the algebraically largest.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from pyhessian import hessian as PyHessian
from pyhessian.utils import hessian_vector_product
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from kramers_callback._probe import ProbeLoss
from kramers_callback.curvature._random import resolve_generator, standard_normal
from kramers_callback.curvature.hvp import (
    as_scipy_operator,
    check_block,
    check_vector,
    matmat_by_rows,
    quadratic_forms,
)
from kramers_callback.curvature.krylov import check_eigen_arguments, extreme_eigenpairs
from kramers_callback.curvature.min_eigenpair import as_init_block, check_upper_bound
from kramers_callback.curvature.operator_backend import OperatorCurvature
from kramers_callback.curvature.rayleigh_ritz import converged_mask, convergence_floor
from kramers_callback.curvature.results import EigenResult, SpectrumEnds
from kramers_callback.curvature.spectrum_ends import warm_start_block

# ``pyhessian.hessian`` the attribute is the class (its __init__ re-exports it over the module).
_PYHESSIAN_MODULE = importlib.import_module("pyhessian.hessian")
_CREATE_GRAPH_WARNING = r"Using backward\(\) with create_graph=True"


class FlatLossModule(nn.Module):
    """The probe loss as a module with one flat parameter, so PyHessian touches only this."""

    def __init__(self, probe: ProbeLoss) -> None:
        super().__init__()
        self.flat = nn.Parameter(probe.x0.detach().clone())
        self._probe = probe  # a plain attribute: the user's model is not a submodule here

    def forward(self, inputs: Any) -> Tensor:
        return self._probe.mean_loss(self.flat)


def _identity_criterion(output: Tensor, target: Any) -> Tensor:
    return output


class PyHessianOperator:
    r"""``v ↦ Hv`` by PyHessian's ``hessian_vector_product`` on a :class:`FlatLossModule`.

    .. math:: H v = \nabla_x\big(\nabla_x L(x)^\top v\big)\big|_{x = x_0}

    Same interface as :class:`.HessianOperator` (``matvec``, ``matmat``, ``quadratic_form``,
    ``num_products``, ``gradient``, ``as_linear_operator``). Cost: construction is one forward
    and one backward pass over the probe set (PyHessian's ``loss.backward(create_graph=True)``);
    each product one double-backward pass. Memory: the probe set's graph until :meth:`close`.
    """

    def __init__(self, probe: ProbeLoss) -> None:
        self.dim = probe.dim
        self.dtype = probe.dtype
        self.device = probe.device
        self.num_products = 0
        self.module = FlatLossModule(probe)
        dummy = torch.zeros(1, device=probe.device)
        with warnings.catch_warnings(), torch.enable_grad():
            # PyHessian's own backward(create_graph=True); close() breaks the cycle it warns of.
            warnings.filterwarnings("ignore", message=_CREATE_GRAPH_WARNING)
            self.hessian: PyHessian | None = PyHessian(
                self.module,
                _identity_criterion,
                data=(dummy, dummy),
                cuda=probe.device.type == "cuda",
            )
        self.hessian.device = probe.device  # "cuda" would mean the current device, not ours
        self.module.zero_grad(set_to_none=True)  # PyHessian kept its own copy (gradsH)
        self.gradient = self.hessian.gradsH[0].detach()

    def _hvp(self, v: Tensor) -> Tensor:
        if self.hessian is None:
            raise RuntimeError("PyHessianOperator was closed; build a new one")
        self.num_products += 1
        (hv,) = hessian_vector_product(self.hessian.gradsH, self.hessian.params, [v])
        return hv.detach()

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` (one product) through PyHessian's ``hessian_vector_product``."""
        check_vector("v", v, self.dim)
        return self._hvp(v.detach().to(device=self.device, dtype=self.dtype))

    def matmat(self, V: Tensor) -> Tensor:
        """``H`` applied to each row of ``V`` (``Tensor[k, d]``): ``k`` products."""
        return matmat_by_rows(self, V)

    def quadratic_form(self, V: Tensor) -> Tensor:
        """``[v_iᵀ H v_i]`` for the rows of ``V``; ``k`` products."""
        return quadratic_forms(self, V)

    def as_linear_operator(self) -> LinearOperator:
        """This operator as a float64 scipy ``LinearOperator``; its products are counted here."""
        return as_scipy_operator(self)

    @contextlib.contextmanager
    def counted_inside_pyhessian(self, shift: float = 0.0) -> Iterator[None]:
        """Route ``hessian.eigenvalues()``'s products through :meth:`_hvp`, minus ``shift·v``.

        PyHessian has no hook for this: ``eigenvalues()`` calls the module-level name
        ``pyhessian.hessian.hessian_vector_product``, which is swapped for the duration. That is
        how its products are counted, how ``H − σI`` is run through its power iteration, and how
        its float32 start vectors (drawn in the default dtype) meet a float64 probe.
        """

        def counted(gradsH: list[Tensor], params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
            x = v[0].to(dtype=self.dtype)
            hv = self._hvp(x)
            return [hv - shift * x if shift else hv]

        original = _PYHESSIAN_MODULE.hessian_vector_product
        _PYHESSIAN_MODULE.hessian_vector_product = counted
        try:
            yield
        finally:
            _PYHESSIAN_MODULE.hessian_vector_product = original

    def close(self) -> None:
        """Free PyHessian's graph and the wrapper's graph-attached ``.grad``."""
        if self.hessian is not None:
            self.hessian.gradsH = None
            self.hessian.params = None
            self.hessian = None
        self.module.flat.grad = None


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def _pyhessian_power_iteration(
    op: PyHessianOperator,
    k: int,
    max_iter: int,
    tol: float,
    seed: int,
    shift: float = 0.0,
) -> Tensor:
    """Unit vectors from ``hessian.eigenvalues(maxIter, tol, top_n=k)`` on ``H − shift·I``.

    PyHessian's tolerance bounds the relative change of the Rayleigh quotient between two
    steps. That change is second order in the vector's error, and a fraction ``1 − r²`` of the
    remaining error (``r = λ_{i+1}/λ_i``), while the residual is first order: ``(tol/10)²`` is
    passed so the residual usually ends below ``tol``, which is then checked. Its start vectors
    come from the global RNG, so it runs in a forked RNG seeded from ``seed``: the caller's RNG
    state is untouched and the result reproducible.
    """
    assert op.hessian is not None
    with torch.random.fork_rng(devices=[]), op.counted_inside_pyhessian(shift):
        torch.default_generator.manual_seed(seed)
        _, vectors = op.hessian.eigenvalues(maxIter=max_iter, tol=(tol / 10) ** 2, top_n=k)
    U = torch.stack([v[0].detach().to(op.dtype).reshape(-1) for v in vectors])
    return U / torch.linalg.vector_norm(U, dim=1, keepdim=True)


def _pairs_of(op: PyHessianOperator, U: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rayleigh quotients, unit rows and exact residuals of the rows of ``U``; ``k`` products."""
    HU = op.matmat(U)
    theta = (U.double() * HU.double()).sum(dim=1)
    residuals = torch.linalg.vector_norm(HU.double() - theta[:, None] * U.double(), dim=1)
    return theta, U, residuals


def pyhessian_top_eigenpairs(
    op: PyHessianOperator,
    k: int,
    *,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
) -> EigenResult:
    r"""Top-``k`` eigenpairs by PyHessian's power iteration with deflation, checked by residual.

    .. math::

        v \leftarrow \frac{(I - P_{<i}) H v}{\lVert (I - P_{<i}) H v \rVert},
        \qquad \text{converged} \iff \lVert H u_i - \lambda_i u_i \rVert
        \le \mathrm{tol}\cdot\max(|\lambda_i|, \text{floor}) .

    Source: Yao et al. (2020), "PyHessian: Neural networks through the lens of the Hessian",
    ``hessian.eigenvalues``. ``λ_i`` are the Rayleigh quotients of the returned vectors.
    Warm start: PyHessian cannot take start vectors, so with ``init`` (``k' ≥ k`` rows) the
    native Lanczos runs first for ``min(k', max_products − 2k)`` products from them and is
    returned if it converged (exact previous eigenvectors do); otherwise PyHessian runs cold.
    Assumptions: power iteration ranks by ``|λ|``; a negative Rayleigh quotient triggers a
    second run on ``H − σI`` (``σ`` = the most negative one), which ranks by ``λ``.

    Cost: at most ``max_products`` products (at least ``2k``): ``⌊(budget − k)/k⌋`` power steps
    per eigenvalue plus ``k`` for the residuals; convergence is linear in ``λ_{i+1}/λ_i``.
    """
    check_eigen_arguments(op, k, tol, max_products)
    if max_products < 2 * k:
        raise ValueError(f"max_products must be an integer ≥ 2k = {2 * k}, got {max_products!r}")
    generator = resolve_generator(generator)
    start = op.num_products
    # The warm check leaves PyHessian at least 2k products: k power steps and k residuals.
    # One product beyond the init's rank lets Lanczos look outside a stale invariant span.
    warm_budget = (
        min(len(check_block("init", init, op.dim)) + 1, max_products - 2 * k)
        if init is not None
        else 0
    )
    if warm_budget >= k:
        warm = extreme_eigenpairs(
            op, k, largest=True, init=init, tol=tol, max_products=warm_budget, generator=generator
        )
        if warm.converged:
            return warm
    shift = 0.0
    result: EigenResult | None = None
    while True:
        budget = max_products - (op.num_products - start)
        max_iter = (budget - k) // k
        if max_iter < 1:
            break
        U = _pyhessian_power_iteration(op, k, max_iter, tol, _seed_from(generator), shift)
        theta, U, residuals = _pairs_of(op, U)
        order = torch.argsort(theta, descending=True)
        theta, U, residuals = theta[order], U[order], residuals[order]
        floor = convergence_floor(theta, op.dtype)
        ranked_by_value = shift != 0.0 or bool((theta >= 0).all()) or k == op.dim
        result = EigenResult(
            eigenvalues=theta.to(op.dtype),
            eigenvectors=U,
            converged=ranked_by_value and bool(converged_mask(theta, residuals, tol, floor).all()),
            num_products=op.num_products - start,
            residual_norms=residuals.to(op.dtype),
        )
        if ranked_by_value:
            break
        shift = float(theta.min())
    assert result is not None  # the first pass always has 2k products left
    return result


def pyhessian_min_eigenpair(
    op: PyHessianOperator,
    *,
    init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
    upper_bound: float | None = None,
) -> EigenResult:
    r"""``λ_min`` by power iteration on ``c·I − H`` with PyHessian's Hessian-vector product.

    .. math::

        v \leftarrow \frac{c v - H v}{\lVert c v - H v \rVert}, \qquad
        \theta = v^\top H v \to \lambda_{\min}
        \quad \text{if } c > (\lambda_{\max} + \lambda_{\min})/2 .

    ``c = upper_bound`` (e.g. the top eigenvalue); without it, PyHessian's power iteration
    estimates the dominant eigenvalue ``μ`` first: if ``μ < 0`` it is ``λ_min`` already,
    otherwise ``c = μ``. Every step's residual is exact (its product is at hand), and the
    iteration stops when it is ``≤ tol·max(|θ|, floor)``.

    Assumptions: ``H`` symmetric. Convergence is linear in
    ``(c − λ_2') / (c − λ_min)`` (``λ_2'`` the second smallest), slow when the bottom of the
    spectrum is clustered; the native Lanczos backend is much faster there.
    Cost: at most ``max_products`` products (at least 3 without ``upper_bound``); memory ``O(d)``.
    """
    check_eigen_arguments(op, 1, tol, max_products)
    c = check_upper_bound(upper_bound)
    # One product at least for the iteration itself, plus two for estimating c when not given.
    minimum = 1 if c is not None else 3
    if max_products < minimum:
        raise ValueError(f"max_products must be an integer ≥ {minimum}, got {max_products!r}")
    generator = resolve_generator(generator)
    init = as_init_block(init, op.dim)
    if init is not None:
        check_block("init", init, op.dim)
    start = op.num_products

    def used() -> int:
        return op.num_products - start

    if c is None:
        max_iter = max(1, min(100, (max_products - 1) // 2))
        U = _pyhessian_power_iteration(op, 1, max_iter, tol, _seed_from(generator))
        theta, U, residuals = _pairs_of(op, U)
        mu = float(theta[0])
        if mu < 0:  # the dominant eigenvalue is negative, so it is the smallest one
            floor = convergence_floor(theta, op.dtype)
            return EigenResult(
                eigenvalues=theta.to(op.dtype),
                eigenvectors=U,
                converged=bool(converged_mask(theta, residuals, tol, floor).all()),
                num_products=used(),
                residual_norms=residuals.to(op.dtype),
            )
        c = mu
    v = standard_normal((op.dim,), generator, op.dtype, op.device)
    if init is not None and float(torch.linalg.vector_norm(init[0])) > 0:
        v = init[0].detach().to(device=op.device, dtype=op.dtype)
    v = v / torch.linalg.vector_norm(v)
    floor = convergence_floor(torch.tensor([c]), op.dtype)
    theta_v, residual = math.nan, math.inf
    while used() < max_products:
        hv = op._hvp(v)
        theta_v = float(v.double() @ hv.double())
        residual = float(torch.linalg.vector_norm(hv.double() - theta_v * v.double()))
        if residual <= max(tol * abs(theta_v), floor):
            break
        w = c * v - hv
        norm = torch.linalg.vector_norm(w)
        if float(norm) == 0.0:  # v is an eigenvector of c·I − H with eigenvalue 0
            break
        v_next = w / norm
        if used() >= max_products:
            break
        v = v_next
    converged = residual <= max(tol * abs(theta_v), floor)
    return EigenResult(
        eigenvalues=torch.tensor([theta_v], dtype=op.dtype, device=op.device),
        eigenvectors=v[None].clone(),
        converged=converged,
        num_products=used(),
        residual_norms=torch.tensor([residual], dtype=op.dtype, device=op.device),
    )


def pyhessian_spectrum_ends(
    op: PyHessianOperator,
    k: int,
    *,
    top_init: Tensor | None = None,
    bottom_init: Tensor | None = None,
    tol: float = 1e-3,
    max_products: int = 300,
    generator: torch.Generator | None = None,
) -> SpectrumEnds:
    """Both ends in two runs, as PyHessian's power iteration cannot share one:
    :func:`pyhessian_top_eigenpairs` with ``max_products − 1``, then
    :func:`pyhessian_min_eigenpair` (shifted by ``|λ_max|``) with what is left, so that
    ``max_products`` caps both together. No basis is kept (the trace is plain Hutchinson).

    Cost: at most ``max_products`` products (at least ``2k + 1``).
    """
    check_eigen_arguments(op, k, tol, max_products)
    if max_products < 2 * k + 1:
        raise ValueError(
            f"max_products must be an integer ≥ 2k + 1 = {2 * k + 1}, got {max_products!r}"
        )
    warm_start_block(top_init, bottom_init, op.dim)  # refuse a misshapen warm start up front
    start = op.num_products
    top = pyhessian_top_eigenpairs(
        op, k, init=top_init, tol=tol, max_products=max_products - 1, generator=generator
    )
    bottom = pyhessian_min_eigenpair(
        op,
        init=bottom_init,
        tol=tol,
        max_products=max_products - top.num_products,
        generator=generator,
        upper_bound=abs(float(top.eigenvalues[0])),
    )
    return SpectrumEnds(top=top, bottom=bottom, num_products=op.num_products - start)


class PyHessianCurvature(OperatorCurvature):
    """The ``"pyhessian"`` backend of :func:`.make_curvature` (see the module docstring): its
    trace is :func:`.hutchinson_trace` on PyHessian's products, never ``hessian.trace()``."""

    name = "pyhessian"
    solve_top = staticmethod(pyhessian_top_eigenpairs)
    solve_min = staticmethod(pyhessian_min_eigenpair)
    solve_ends = staticmethod(pyhessian_spectrum_ends)

    def __init__(self, probe: ProbeLoss) -> None:
        super().__init__(PyHessianOperator(probe))
