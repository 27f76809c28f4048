"""Routed convolutions for IOP-FL outside personalisation (test-time routing on an unseen site).

Each routed layer holds a frozen stack of E expert kernels (the global model and every site's personalised
model) and a small router that looks at the layer's input and gives every sample its own mixing weights:

    z = GAP(x);  r = sigmoid(fc2(dropout(fc1(z))));  W(sample) = sum_e r_e W_e;  b(sample) = sum_e r_e b_e.

As in the reference (``nets/routeconv.py``): fc1 C -> 2C, fc2 2C -> E, no activation between them, dropout 0.2,
sigmoid (weights do not sum to one), routers randomly initialised. Per-sample kernels run as one grouped
convolution over the batch. Plain torch, no NVFlare.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Router", "RoutedConv2d", "build_routing_model", "routing_parameters", "use_batch_statistics"]


class Router(nn.Module):
    """Per-sample expert weights from the globally pooled layer input: (B, C, H, W) -> (B, E) in (0, 1)."""

    def __init__(self, in_channels: int, num_experts: int, dropout: float = 0.2):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, 2 * in_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(2 * in_channels, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(self.dropout(self.fc1(z))))


class RoutedConv2d(nn.Module):
    """A Conv2d or ConvTranspose2d whose kernel is a per-sample mix of frozen expert kernels.

    Args:
        expert_weight: (E, *kernel shape) stacked expert kernels (Conv2d: (E, Cout, Cin, k, k);
            ConvTranspose2d: (E, Cin, Cout, k, k)).
        expert_bias: (E, Cout) stacked expert biases, or None.
        transposed: whether the experts are transposed convolutions.
        stride, padding, output_padding, dilation: as in the original layer (groups must be 1).
        dropout: router dropout.
    """

    def __init__(
        self,
        expert_weight: torch.Tensor,
        expert_bias: torch.Tensor | None,
        transposed: bool = False,
        stride=1,
        padding=0,
        output_padding=0,
        dilation=1,
        dropout: float = 0.2,
    ):
        super().__init__()
        if expert_weight.ndim != 5:
            raise ValueError(f"expert_weight must be (E, C, C, k, k), got shape {tuple(expert_weight.shape)}")
        if expert_bias is not None and expert_bias.shape[0] != expert_weight.shape[0]:
            raise ValueError(
                f"expert_bias holds {expert_bias.shape[0]} experts but expert_weight {expert_weight.shape[0]}"
            )
        self.register_buffer("expert_weight", expert_weight.detach().clone())
        self.register_buffer("expert_bias", None if expert_bias is None else expert_bias.detach().clone())
        self.transposed = transposed
        self.stride, self.padding, self.output_padding, self.dilation = stride, padding, output_padding, dilation
        in_channels = expert_weight.shape[1] if transposed else expert_weight.shape[2]
        self.router = Router(in_channels, expert_weight.shape[0], dropout)

    @property
    def num_experts(self) -> int:
        return self.expert_weight.shape[0]

    @classmethod
    def from_experts(cls, layer: nn.Module, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor] | None,
                     dropout: float = 0.2) -> RoutedConv2d:
        """Wrap ``layer``'s geometry around the experts' kernels (``layer`` supplies stride, padding ...)."""
        if not isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) or layer.groups != 1:
            raise ValueError(f"layer must be a Conv2d/ConvTranspose2d with groups=1, got {layer!r}")
        transposed = isinstance(layer, nn.ConvTranspose2d)
        return cls(
            torch.stack(list(weights)),
            None if biases is None else torch.stack(list(biases)),
            transposed=transposed,
            stride=layer.stride,
            padding=layer.padding,
            output_padding=layer.output_padding if transposed else 0,
            dilation=layer.dilation,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the mixed kernels; ``weights`` (B, E) overrides the router (tests, uniform averaging)."""
        r = self.router(x) if weights is None else weights
        b = x.shape[0]
        if r.shape != (b, self.num_experts):
            raise ValueError(f"routing weights must be ({b}, {self.num_experts}), got {tuple(r.shape)}")
        kernel = torch.einsum("be,e...->b...", r, self.expert_weight)  # (B, *kernel shape)
        bias = None if self.expert_bias is None else (r @ self.expert_bias).reshape(-1)
        grouped = x.reshape(1, -1, *x.shape[2:])
        kernel = kernel.reshape(-1, *kernel.shape[2:])
        if self.transposed:
            y = F.conv_transpose2d(grouped, kernel, bias, self.stride, self.padding, self.output_padding, b,
                                   self.dilation)
        else:
            y = F.conv2d(grouped, kernel, bias, self.stride, self.padding, self.dilation, b)
        return y.reshape(b, -1, *y.shape[2:])


def build_routing_model(
    template: nn.Module, experts: Sequence[Mapping[str, torch.Tensor]], global_state: Mapping[str, torch.Tensor],
    dropout: float = 0.2,
) -> nn.Module:
    """Copy ``template``, swap every conv / transposed conv for a :class:`RoutedConv2d` over ``experts``.

    BatchNorm affine parameters come from ``global_state``; running statistics are dropped, so BatchNorm
    normalises with the target batch's statistics (as the reference does). Only routers and BatchNorm affine
    parameters are trainable (:func:`routing_parameters`).

    Args:
        template: a model of the experts' architecture (its weights are not used).
        experts: E state_dicts with the template's keys (the reference: every personalised model + the global).
        global_state: the global model's state_dict.
    """
    if not experts:
        raise ValueError("experts must hold at least one state_dict, got none")
    model = copy.deepcopy(template)
    model.load_state_dict(global_state)
    for name, layer in list(model.named_modules()):
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            missing = [i for i, e in enumerate(experts) if f"{name}.weight" not in e]
            if missing:
                raise KeyError(f"experts {missing} lack the key {name + '.weight'!r}")
            biases = None if layer.bias is None else [e[f"{name}.bias"] for e in experts]
            routed = RoutedConv2d.from_experts(layer, [e[f"{name}.weight"] for e in experts], biases, dropout)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, routed)
    use_batch_statistics(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in routing_parameters(model):
        p.requires_grad_(True)
    return model


def routing_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What test-time routing trains: every router and every BatchNorm affine parameter."""
    params = []
    for module in model.modules():
        if isinstance(module, Router):
            params += list(module.parameters())
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            params += [module.weight, module.bias]
    return params


def use_batch_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm layers normalise with each batch's statistics (running stats dropped), in train and eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
    return model
