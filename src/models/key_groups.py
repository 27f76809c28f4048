"""Which ``state_dict`` keys of a model leave a site: one answer for every algorithm.

* ``shared``: sent to the server and loaded back as received (FedAvg's whole model);
* ``adaptive``: sent and averaged, but loaded back through a personalisation rule (FedICRA's decoder mixing);
* ``personal``: never sent, never overwritten by what the server sends (FedBN's norms, FedMRI's decoder,
  FedICRA's channel selection).

The groups are disjoint and cover the model's ``state_dict``; :meth:`KeyGroups.split` builds them and refuses a
split that names keys the model does not have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["KeyGroups", "norm_keys"]


@dataclass(frozen=True)
class KeyGroups:
    """Disjoint shared / adaptive / personal key sets of one model (see the module docstring)."""

    shared: frozenset[str]
    adaptive: frozenset[str] = frozenset()
    personal: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for a, b in (("shared", "adaptive"), ("shared", "personal"), ("adaptive", "personal")):
            overlap = getattr(self, a) & getattr(self, b)
            if overlap:
                raise ValueError(f"key groups {a!r} and {b!r} overlap: {sorted(overlap)[:5]}")

    @property
    def sent(self) -> frozenset[str]:
        """Keys a site sends to the server."""
        return self.shared | self.adaptive

    @classmethod
    def split(cls, model: nn.Module, personal: Iterable[str] = (), adaptive: Iterable[str] = ()) -> KeyGroups:
        """Groups of ``model``: the given personal and adaptive keys, every other key shared."""
        keys = set(model.state_dict())
        personal, adaptive = frozenset(personal), frozenset(adaptive)
        unknown = sorted((personal | adaptive) - keys)
        if unknown:
            raise KeyError(f"{type(model).__name__} has no state_dict keys {unknown[:5]}")
        return cls(frozenset(keys - personal - adaptive), adaptive, personal)


def norm_keys(model: nn.Module) -> list[str]:
    """state_dict keys of every BatchNorm layer (weight, bias, running stats, batch counter): FedBN's personal keys.

    Found by type, not by name, so FedBN cannot silently keep nothing local.
    """
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys += [f"{name}.{k}" for k in module.state_dict()]
    return keys
