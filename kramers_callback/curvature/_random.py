"""Random probe and start vectors from a private generator (the global RNG is never touched)."""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_SEED = 0


def resolve_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a fresh CPU generator seeded with :data:`DEFAULT_SEED` (deterministic)."""
    if generator is None:
        return torch.Generator().manual_seed(DEFAULT_SEED)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
    return generator


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``N(0, 1)`` entries, drawn in float64 on the generator's device so results do not depend
    on the estimate's dtype or device."""
    draw = torch.randn(shape, generator=generator, dtype=torch.float64, device=generator.device)
    return draw.to(device=device, dtype=dtype)


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Independent ``±1`` entries with probability ½ each."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2 * bits - 1).to(device=device, dtype=dtype)
