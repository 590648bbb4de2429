"""Test-session settings shared by every test file."""

from __future__ import annotations

import torch

# The tests use tiny tensors, where OpenMP threads cost more than they give; on a busy 2-core
# machine two threads spin against each other and a 0.1 s estimate can take 30 s. One thread
# also leaves the second core to the DDP test's other process.
torch.set_num_threads(1)
