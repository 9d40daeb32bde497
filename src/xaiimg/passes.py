"""Count model passes (DESIGN.md, "Performance principles"): tests assert the counts, benchmarks report them."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class PassLog:
    """Batch size of every forward call of the model, and how many of them received a backward pass."""

    forward_batches: list[int] = field(default_factory=list)
    backward_batches: list[int] = field(default_factory=list)

    @property
    def forwards(self) -> int:
        return len(self.forward_batches)

    @property
    def images_forwarded(self) -> int:
        return sum(self.forward_batches)

    @property
    def backwards(self) -> int:
        return len(self.backward_batches)

    @property
    def images_backwarded(self) -> int:
        return sum(self.backward_batches)


@contextmanager
def count_passes(model: nn.Module) -> Iterator[PassLog]:
    """Log each ``model(x)`` call's batch size, and each backward that reaches its output."""
    log = PassLog()

    def on_forward(_module, inputs, output):
        batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else 0
        log.forward_batches.append(batch)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: log.backward_batches.append(grad.shape[0]))

    handle = model.register_forward_hook(on_forward)
    try:
        yield log
    finally:
        handle.remove()
