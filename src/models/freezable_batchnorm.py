"""BatchNorm2d that can be switched to "frozen" for passes on generated data.

Cooperative training runs some forward passes on *generated* inputs (latent-masked codes, hard examples). Those
passes must neither move the running statistics (they would then describe synthetic data at test time) nor,
optionally, train the affine parameters. `nn.BatchNorm2d` offers neither switch per call, so this subclass adds one
flag and a context manager that flips it for every such layer inside a set of modules. The state_dict keys are
exactly those of `nn.BatchNorm2d`, so checkpoints stay interchangeable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FreezableBatchNorm2d", "frozen_batchnorm", "frozen_parameters"]


class FreezableBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` with a `frozen` mode.

    When `frozen` is True and the layer is in training mode, it normalises with the *batch* statistics (as
    training-mode BN does) but does not update `running_mean`/`running_var`/`num_batches_tracked`, and the affine
    weight and bias enter the graph detached, so no gradient reaches them from this pass. In eval mode a frozen
    layer behaves like eval-mode BN with detached affine parameters.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.frozen:
            return super().forward(x)
        self._check_input_dim(x)
        weight = None if self.weight is None else self.weight.detach()
        bias = None if self.bias is None else self.bias.detach()
        if self.training or self.running_mean is None:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps)


@contextlib.contextmanager
def frozen_batchnorm(*modules: nn.Module) -> Iterator[None]:
    """Freeze every `FreezableBatchNorm2d` inside `modules` for the duration of the block (restores prior flags)."""
    layers = [m for module in modules for m in module.modules() if isinstance(m, FreezableBatchNorm2d)]
    previous = [layer.frozen for layer in layers]
    for layer in layers:
        layer.frozen = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, previous):
            layer.frozen = flag


@contextlib.contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """Set `requires_grad=False` on all parameters of `modules` inside the block, then restore each flag.

    Used for the frozen decoders during hard-example generation: no gradient is accumulated on them, and autograd
    does not even compute their weight gradients (cheaper than computing and discarding).
    """
    params = [p for module in modules for p in module.parameters()]
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)
