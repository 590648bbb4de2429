"""Gradient-noise estimators and SGD temperatures (docs/theory.md section 2).

Estimators of the per-sample gradient covariance ``Σ₁``, cheapest first:

- :class:`RunningNoiseEstimator`: two-batch estimator fed by the training steps' gradients.
- :func:`micro_batch_noise`: random micro-batches of the probe set (works with BatchNorm).
- :func:`per_sample_noise`: exact per-sample gradients by ``vmap(grad)``, the reference.
- :func:`directional_variance`: ``vᵀΣ₁v`` by forward-mode products, for ``T_v``.

Temperatures from their results: :func:`isotropic_temperature`,
:func:`directional_temperature`, :func:`gradient_noise_scale`, :func:`effective_lr`,
:func:`finite_population_factor`.
"""

from kramers_callback.noise.directional import directional_variance
from kramers_callback.noise.micro_batch import (
    default_micro_batch_size,
    micro_batch_noise,
    micro_batch_noise_trace,
    micro_batch_relative_error,
)
from kramers_callback.noise.moments import NoiseMoments, unbiased_gradient_norm_sq
from kramers_callback.noise.per_sample import per_sample_gradients, per_sample_noise
from kramers_callback.noise.running import (
    RunningNoiseEstimator,
    two_batch_gradient_norm_sq,
    two_batch_noise_trace,
)
from kramers_callback.noise.temperature import (
    directional_temperature,
    effective_lr,
    finite_population_factor,
    gradient_noise_scale,
    isotropic_temperature,
)

__all__ = [
    "NoiseMoments",
    "RunningNoiseEstimator",
    "default_micro_batch_size",
    "directional_temperature",
    "directional_variance",
    "effective_lr",
    "finite_population_factor",
    "gradient_noise_scale",
    "isotropic_temperature",
    "micro_batch_noise",
    "micro_batch_noise_trace",
    "micro_batch_relative_error",
    "per_sample_gradients",
    "per_sample_noise",
    "two_batch_gradient_norm_sq",
    "two_batch_noise_trace",
    "unbiased_gradient_norm_sq",
]
