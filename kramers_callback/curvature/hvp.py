"""Hessian-vector products of the probe-set loss by double backward (Pearlmutter 1994).

:class:`HessianOperator` is the one place where the estimators touch autograd: every curvature
estimator (eigenpairs, trace, quadratic forms) only calls :meth:`HessianOperator.matvec`, so
each is a pure function of a symmetric linear map and can be tested against a dense matrix.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from kramers_callback._probe import ProbeLoss


def check_vector(name: str, value: object, dim: int) -> Tensor:
    """``value`` is a ``Tensor`` of shape ``[dim]`` with finite entries."""
    if not isinstance(value, Tensor) or value.shape != (dim,):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor of shape [{dim}], got {got!r}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must have finite entries, got non-finite values")
    return value


def check_block(name: str, value: object, dim: int) -> Tensor:
    """``value`` is a ``Tensor`` of shape ``[k, dim]`` (``k ≥ 1``) with finite entries."""
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != dim or not len(value):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor of shape [k, {dim}] with k ≥ 1, got {got!r}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must have finite entries, got non-finite values")
    return value


@runtime_checkable
class CurvatureOperator(Protocol):
    """A symmetric linear map ``v ↦ Hv`` on ``R^dim`` that counts its products.

    Both :class:`HessianOperator` and the pyhessian backend's operator satisfy it, so the
    eigen- and trace estimators run unchanged on either.
    """

    dim: int
    dtype: torch.dtype
    device: torch.device
    num_products: int

    def matvec(self, v: Tensor) -> Tensor: ...

    def matmat(self, V: Tensor) -> Tensor: ...


def matmat_by_rows(op: CurvatureOperator, V: Tensor) -> Tensor:
    """``[H v_1, …, H v_k]`` as rows, one :meth:`matvec` per row (``k`` products)."""
    check_block("V", V, op.dim)
    return torch.stack([op.matvec(v) for v in V])


def quadratic_forms(op: CurvatureOperator, V: Tensor) -> Tensor:
    """``[v_iᵀ H v_i]_i`` for the rows of ``V`` (``k`` products)."""
    V = check_block("V", V, op.dim).to(device=op.device, dtype=op.dtype)
    return (V * op.matmat(V)).sum(dim=1)


def as_scipy_operator(op: CurvatureOperator) -> LinearOperator:
    """``op`` as a float64 :class:`scipy.sparse.linalg.LinearOperator` (``H`` is symmetric).

    Every column it is applied to goes through ``op.matvec``, so ``op.num_products`` counts
    the products scipy's solvers make.
    """

    def apply(v: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1))
        return op.matvec(x.to(device=op.device, dtype=op.dtype)).detach().cpu().double().numpy()

    def apply_block(V: np.ndarray) -> np.ndarray:
        X = torch.as_tensor(np.asarray(V, dtype=np.float64)).T.to(device=op.device, dtype=op.dtype)
        return op.matmat(X).detach().cpu().double().numpy().T

    return LinearOperator(
        shape=(op.dim, op.dim),
        matvec=apply,
        rmatvec=apply,
        matmat=apply_block,
        rmatmat=apply_block,
        dtype=np.float64,
    )


class HessianOperator:
    r"""The Hessian of the probe-set mean loss at ``probe.x0``, applied by double backward.

    .. math::

        H v = \sum_b w_b \, \nabla_x \big( g_b(x)^\top v \big) \Big|_{x = x_0},
        \qquad g_b = \nabla_x L_b, \quad w_b = n_b / n,

    where ``L_b`` is the mean loss of probe batch ``b`` (``n_b`` samples, ``n`` in all), so
    ``Σ_b w_b L_b`` is the probe-set mean loss ``L``. Source: Pearlmutter (1994), "Fast exact
    multiplication by the Hessian".

    The gradient graphs (``create_graph=True``) are built once, at construction, and every
    product reuses them (``retain_graph=True``): a product is one backward pass through the
    gradient graph of every probe batch, about twice the cost of one gradient.

    Assumptions: the loss is twice differentiable at ``x0`` (piecewise-linear activations such
    as ReLU give the generalised Hessian autograd computes); the model is in the mode the
    estimate should use (eval), since the graph is recorded once.

    Cost: construction is one forward and one backward pass per probe batch; each product one
    double-backward pass over the whole probe set. Memory: the activations and gradient graph
    of the whole probe set stay alive until :meth:`close` (or the operator is dropped).

    Attributes:
        gradient: ``∇L(x0)`` (``Tensor[d]``), a free by-product of building the graphs.
        num_products: Hessian-vector products on the whole probe set made so far.
        dim, dtype, device: those of ``probe.x0``.
    """

    def __init__(self, probe: ProbeLoss) -> None:
        self.dim = probe.dim
        self.dtype = probe.dtype
        self.device = probe.device
        self.num_products = 0
        self._x = probe.x0.detach().clone().requires_grad_(True)
        total: Tensor | None = None
        with torch.enable_grad():
            for batch, weight in zip(probe.batches, probe.batch_weights(), strict=True):
                losses = probe.check_losses(probe.per_sample_losses(self._x, batch), batch)
                (grad_b,) = torch.autograd.grad(
                    losses.to(self.dtype).mean(), self._x, create_graph=True, allow_unused=True
                )
                if grad_b is None:  # the loss does not depend on x at all
                    grad_b = torch.zeros_like(self._x)
                # One weighted sum keeps one graph root, so a product is one backward call.
                total = weight * grad_b if total is None else total + weight * grad_b
        assert total is not None  # ProbeLoss always holds at least one batch
        self._grad_graph: Tensor | None = total
        self.gradient = total.detach()

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` (one product). ``v``: ``Tensor[d]``; returns a detached ``Tensor[d]``."""
        check_vector("v", v, self.dim)
        if self._grad_graph is None:
            raise RuntimeError("HessianOperator was closed; build a new one")
        self.num_products += 1
        v = v.detach().to(device=self.device, dtype=self.dtype)
        if not self._grad_graph.requires_grad:  # gradient constant in x: the loss is linear
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(
            self._grad_graph, self._x, grad_outputs=v, retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(v) if hv is None else hv.detach()

    def matmat(self, V: Tensor) -> Tensor:
        """``H`` applied to each row of ``V`` (``Tensor[k, d]``): ``k`` products."""
        return matmat_by_rows(self, V)

    def quadratic_form(self, V: Tensor) -> Tensor:
        """``[v_iᵀ H v_i]`` for the rows of ``V`` (``[k, d]`` → ``[k]``); ``k`` products."""
        return quadratic_forms(self, V)

    def as_linear_operator(self) -> LinearOperator:
        """This operator as a float64 scipy ``LinearOperator``; its products are counted here."""
        return as_scipy_operator(self)

    def close(self) -> None:
        """Release the gradient graphs (and with them the probe activations)."""
        self._grad_graph = None
