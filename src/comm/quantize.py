"""``--quantize``: NVFlare's model quantization filters on every model that crosses the wire, per job.

NVFlare's :class:`~nvflare.app_opt.pt.quantization.quantizer.ModelQuantizer` runs where a model leaves (the
server's ``train`` task; a site's ``train`` and ``submit_model`` results) and its
:class:`~nvflare.app_opt.pt.quantization.dequantizer.ModelDequantizer` where it arrives (the site's incoming
``train`` task; the server's incoming results), so both directions are quantized and both ends compute in full
precision. Types: ``float16`` and ``adaquant`` run on CPU; ``blockwise8``, ``float4`` and ``normfloat4`` use
bitsandbytes on CUDA (NVFlare's own note) and are refused without a GPU, before anything is built.

Two deviations from using NVFlare's classes as they are (both in :class:`FloatQuantizer` /
:class:`FloatDequantizer`, subclasses that call NVFlare's code for the quantization itself):

* entries that are not floating-point arrays (integer buffers such as BatchNorm's ``num_batches_tracked``,
  scalar extras beside the model) pass through unchanged: NVFlare's quantizer raises on them;
* the quantizer works on a copy of the outgoing data dict: NVFlare's quantizes the server's task data in place,
  and the server's task data *is* its global model (it would hold half-precision or ADAQUANT-coded arrays after
  the first send, and the aggregator's shape checks would then fail).

Order on a site: personal-key ``ExcludeVars`` and the ``--privacy`` filter run first, then the quantizer, so the
quantization state (ADAQUANT's offsets, norms, compressed arrays) never describes a key that stays on the site.
"""

from __future__ import annotations

import logging

# bitsandbytes warns at import that its optional CPU 4-bit kernels package is absent: irrelevant here (its 4-bit
# types are refused without CUDA), and it would print in every process of every quantized job
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer  # noqa: E402
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer  # noqa: E402

from src.comm.options import (  # noqa: E402, F401  (re-exported)
    CPU_TYPES,
    GPU_TYPES,
    QUANTIZE_CHOICES,
    RESULT_TASKS,
    TASK_DATA_TASKS,
    add_quantize_options,
    check_quantize,
)

__all__ = ["QUANTIZE_CHOICES", "CPU_TYPES", "GPU_TYPES", "FloatQuantizer", "FloatDequantizer",
           "add_quantize_options", "check_quantize", "add_receiving_ends", "add_sending_ends"]

_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def _quantizable(value) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None or not hasattr(value, "nbytes"):
        return False
    name = dtype.name if hasattr(dtype, "name") else str(dtype).split(".")[-1]
    return name in _FLOAT_DTYPES and getattr(value, "ndim", 0) > 0


class FloatQuantizer(ModelQuantizer):
    """NVFlare's ``ModelQuantizer`` on the floating-point arrays of a copy of the data (see the module docstring)."""

    def quantization(self, params: dict, fl_ctx):
        kept = {k: params.pop(k) for k in list(params) if not _quantizable(params[k])}
        quantized, quant_state, source_datatype = super().quantization(params, fl_ctx)
        quantized.update(kept)  # not in source_datatype: FloatDequantizer passes them through too
        return quantized, quant_state, source_datatype

    def process_dxo(self, dxo, shareable, fl_ctx):
        from nvflare.apis.dxo import DXO

        copy = DXO(data_kind=dxo.data_kind, data=dict(dxo.data), meta=dict(dxo.meta or {}))
        return super().process_dxo(copy, shareable, fl_ctx)


class FloatDequantizer(ModelDequantizer):
    """NVFlare's ``ModelDequantizer``; entries the quantizer passed through come back unchanged."""

    def dequantization(self, params: dict, quant_state: dict, quantization_type: str, source_datatype: dict,
                       fl_ctx):
        kept = {k: params.pop(k) for k in list(params) if k not in (source_datatype or {})}
        params = super().dequantization(params, quant_state, quantization_type, source_datatype, fl_ctx)
        params.update(kept)
        return params

    def process_dxo(self, dxo, shareable, fl_ctx):
        if not dxo.get_meta_prop("quantized_flag"):  # nothing to undo (e.g. a result sent without a model)
            return dxo
        return super().process_dxo(dxo, shareable, fl_ctx)


def add_receiving_ends(recipe, kind: str) -> None:
    """The dequantizer where a model arrives: first in the site's ``train`` input chain (before the privacy filter
    remembers the global model) and in the server's result chain (after :class:`~src.comm.wire.WireBytes`, which
    the caller adds first). Nothing for ``none``."""
    check_quantize(kind)
    if kind == "none":
        return
    recipe.add_client_input_filter(FloatDequantizer(), tasks=list(TASK_DATA_TASKS))
    recipe.add_server_input_filter(FloatDequantizer(), tasks=list(RESULT_TASKS))


def add_sending_ends(recipe, kind: str) -> None:
    """The quantizer where a model leaves: last in the site's result chain (after ExcludeVars and the privacy
    filter) and in the server's ``train`` task-data chain (before the caller's ``WireBytes``). Nothing for
    ``none``."""
    check_quantize(kind)
    if kind == "none":
        return
    recipe.add_client_output_filter(FloatQuantizer(quantization_type=kind), tasks=list(RESULT_TASKS))
    recipe.add_server_output_filter(FloatQuantizer(quantization_type=kind), tasks=list(TASK_DATA_TASKS))
