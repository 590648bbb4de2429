"""What the training steps leave for the epoch end: sample counts, the training loss in blocks
and the running two-batch noise estimate.

Torch plumbing for the per-step hooks of :class:`~kramers_callback.KramersCallback`, one call
each: ``O(1)`` per step on the device (no host-device synchronisation), plus ``O(d)`` on the
steps of a sampled noise window. :meth:`StepStatistics.read_epoch` reads everything once per
epoch through the reductions the strategy hands in, so this module needs no Trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kramers_callback import _optimizer as optim_io
from kramers_callback._batch_size import BatchLayout
from kramers_callback._callback_state import load_running, running_to_state
from kramers_callback._loss_blocks import LossBlocks
from kramers_callback._probe import batch_size_of
from kramers_callback._validation import all_finite
from kramers_callback.noise.running import RunningNoiseEstimator
from kramers_callback.observation import LossBlock, RunningNoise, usable_running_noise

__all__ = ["SKIPPED_WINDOWS_NOTE", "EpochStatistics", "StepStatistics"]

SKIPPED_WINDOWS_NOTE = (
    "KramersCallback: the running noise estimate was skipped at steps whose window would span "
    "more samples than the data set; the last estimate's noise was used."
)
"""Said once at fit end where :attr:`StepStatistics.skipped`."""


@dataclass(frozen=True)
class EpochStatistics:
    """One epoch's training steps as the decision reads them, every rank's combined."""

    running: RunningNoise
    """The running noise, its ``tr Σ₁`` ``nan`` where a decision may not use it
    (:func:`~kramers_callback.observation.usable_running_noise`)."""
    loss_finite: bool
    """Whether every training loss of the epoch was finite, on every rank."""
    loss_blocks: tuple[LossBlock, ...]
    """The epoch's non-empty loss blocks, their means averaged over the ranks."""


class StepStatistics:
    """The counters and device sums the per-step hooks feed.

    The running noise estimator takes ``noise_window`` consecutive optimizer steps out of
    every ``noise_window · noise_stride``, counted from the epoch start (so a resume inside an
    epoch samples the same windows), and skips a window that would span more samples than the
    data set. The counters and sums of the epoch in progress are checkpointed
    (:meth:`epoch_state`).

    Args:
        noise_window: consecutive optimizer steps per window of the running estimator.
        noise_stride: one window out of every ``noise_stride``.
    """

    def __init__(self, *, noise_window: int, noise_stride: int) -> None:
        self.noise_window = noise_window
        self.noise_stride = noise_stride
        self.samples_seen = 0
        """Samples (all ranks) trained on in the run."""
        self.samples_per_epoch = 0
        self.epoch_steps = 0
        self.step_samples = 0
        """Samples since the last optimizer step: the batch of the next one."""
        self.batch_samples = 0
        self.running: RunningNoiseEstimator | None = None
        self.blocks = LossBlocks()
        self.skipped = False
        """Whether a window was skipped for spanning more samples than the data set."""
        self.restored: dict[str, Any] | None = None
        """A checkpoint's epoch in progress, until :meth:`start_fit` puts it back."""
        self.dataset_size: int | None = None
        self.world_size = 1
        self.params: list[nn.Parameter] = []
        self.adaptive = False

    def start_fit(
        self,
        *,
        dataset_size: int,
        world_size: int,
        params: list[nn.Parameter],
        adaptive: bool,
        num_batches: float,
        device: torch.device,
    ) -> None:
        """Set up the device sums and put back a checkpoint's epoch in progress;
        ``adaptive``: the gradient noise is read in the Adam family's preconditioned
        coordinates."""
        self.dataset_size = dataset_size
        self.world_size = world_size
        self.params = params
        self.adaptive = adaptive
        self.running = RunningNoiseEstimator(
            window=self.noise_window, dataset_size=dataset_size
        ).to(device)
        # A resume inside an epoch gets no on_train_epoch_start: set the blocks up here too.
        self.blocks.start_epoch(num_batches, device)
        self._restore_epoch()

    def epoch_state(self) -> dict[str, Any] | None:
        """The state of the epoch in progress, which ``on_train_epoch_start`` sets up and which
        Lightning does not set up again when it resumes from a checkpoint written inside an
        epoch (mid-epoch, or at its end before ``on_train_epoch_end``: a ModelCheckpoint
        saving after validation). Plain Python numbers only; before :meth:`start_fit`, a
        restored state passes through (a re-saved checkpoint keeps it)."""
        if self.running is None:
            return self.restored
        return {
            "samples_per_epoch": self.samples_per_epoch,
            "epoch_steps": self.epoch_steps,
            "step_samples": self.step_samples,
            "running": running_to_state(self.running),
            "loss_blocks": self.blocks.state_dict(),
        }

    def _restore_epoch(self) -> None:
        """Put back :attr:`restored` (once; ``on_train_epoch_start`` overwrites it when
        Lightning starts a new epoch rather than finishing the checkpoint's)."""
        state, self.restored = self.restored, None
        if not state or self.running is None:
            return
        self.samples_per_epoch = int(state.get("samples_per_epoch", self.samples_per_epoch))
        self.epoch_steps = int(state.get("epoch_steps", 0))
        self.step_samples = int(state.get("step_samples", 0))
        load_running(self.running, state.get("running") or {})
        self.blocks.load_state_dict(state.get("loss_blocks"))

    def start_epoch(self, num_batches: float, layout: BatchLayout, device: torch.device) -> None:
        per_epoch = self.dataset_size or 0
        if all_finite(num_batches):
            per_epoch = min(per_epoch, int(num_batches) * layout.loader_batch * layout.world_size)
        self.samples_per_epoch = max(per_epoch, 1)
        self.blocks.start_epoch(num_batches, device)
        self.step_samples = 0
        self.epoch_steps = 0

    def count_batch(self, batch: Any) -> int:
        """Count one training batch; returns its samples on all ranks."""
        samples = self.batch_samples = batch_size_of(batch) * self.world_size
        self.step_samples += samples
        self.samples_seen += samples
        return samples

    def add_loss(self, outputs: Any, batch_idx: int) -> None:
        """Add the loss that ``training_step`` returned (a tensor, or a dict with ``"loss"``)."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            # A NaN or inf anywhere makes its block's sum non-finite: one addition per step,
            # read once per epoch (no host-device synchronisation per step).
            self.blocks.add(
                loss,
                batch_idx=batch_idx,
                samples=self.batch_samples,  # counted by count_batch
                position=self.samples_seen,
            )

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Close one optimizer step; on a sampled window, feed its gradient to the running
        estimator."""
        samples, self.step_samples = self.step_samples, 0
        step, self.epoch_steps = self.epoch_steps, self.epoch_steps + 1
        running = self.running
        if running is None or samples <= 0:
            return
        if (step // self.noise_window) % self.noise_stride:
            return
        if step % self.noise_window and not running.window_open:
            # A resume inside a window lost its first steps: a window opened here would pair
            # this step with the next sampled window's, far apart in parameters.
            return
        if self.dataset_size is not None and samples * self.noise_window > self.dataset_size:
            self.skipped = True
            return
        scale = None
        if self.adaptive:
            p = optim_io.preconditioner(optimizer, self.params)
            scale = None if p is None else p.sqrt()
        running.update(optim_io.flat_gradient(self.params, scale), samples)

    def read_epoch(self, *, mean: Callable[[Tensor], Tensor]) -> EpochStatistics:
        """The epoch's statistics, and a fresh start for the running estimate. ``mean``
        averages a tensor over the ranks: one synchronisation, whose non-finite result on any
        rank's loss is every rank's."""
        assert self.running is not None
        blocks = tuple(self.blocks.read(mean))
        loss_finite = all_finite(*(b.mean for b in blocks))
        running = RunningNoise()
        if self.running.update_called:
            values = self.running.compute()
            running = RunningNoise(
                noise_trace=usable_running_noise(
                    float(values["noise_trace"]), loss_finite=loss_finite
                ),
                noise_scale=float(values["noise_scale"]),
            )
        self.running.reset()
        return EpochStatistics(running, loss_finite=loss_finite, loss_blocks=blocks)
