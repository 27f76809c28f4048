"""The ``--quantize`` option and its checks, without importing NVFlare's quantizer (bitsandbytes is slow to load)."""

from __future__ import annotations

import argparse

__all__ = ["CPU_TYPES", "GPU_TYPES", "QUANTIZE_CHOICES", "RESULT_TASKS", "TASK_DATA_TASKS", "add_quantize_options",
           "check_quantize"]

CPU_TYPES = ("float16", "adaquant")
GPU_TYPES = ("blockwise8", "float4", "normfloat4")
QUANTIZE_CHOICES = ("none", *CPU_TYPES, *GPU_TYPES)
#: tasks whose results the sites quantize and the server counts: every model a site sends (the same set as
#: ExcludeVars', because NVFlare refuses filter chains whose task sets overlap without being equal)
RESULT_TASKS = ("train", "submit_model")
#: tasks whose data the server quantizes and counts: the global model of each round
TASK_DATA_TASKS = ("train",)


def add_quantize_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                        help="quantize every model on the wire with NVFlare's filters (both directions): float16 "
                             "and adaquant run on CPU; blockwise8, float4 and normfloat4 need a CUDA GPU")


def check_quantize(kind: str) -> None:
    """Refuse an unknown type, or a GPU-only type where CUDA is absent (ValueError naming ``--quantize``)."""
    if kind not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {QUANTIZE_CHOICES}, got {kind!r}")
    if kind in GPU_TYPES:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--quantize {kind}: NVFlare's 8- and 4-bit quantization runs on a CUDA GPU "
                             f"(bitsandbytes) and this machine has none; use one of {CPU_TYPES}")
