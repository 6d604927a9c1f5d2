"""A vLLM general plugin: grouped LoRA matmuls (and a sort-free top-p) for the CPU backend.

vLLM-CPU has no LoRA kernels; its PyTorch fallback (`vllm/lora/ops/torch_ops/lora_ops.py`) gathers
a copy of the adapter matrix *per token* (`weights[indices]`) and multiplies with einsum. Measured
here (benchmarks/bench_lora.py): a rank-16 adapter served 3.65x slower than the base model, 1.07x
with this plugin. A batch almost always holds one or two adapters, so we multiply each group of
tokens that share an adapter by that adapter's matrix once: the same arithmetic, without the
per-token copies.

vLLM loads plugins (entry point group `vllm.general_plugins`, see pyproject.toml) in every
process it starts, including the engine core that a Ray actor spawns, which is why this is a
plugin and not a patch in our own process. Set `PERSD_CPU_LORA_PATCH=0` to disable it.
"""
from __future__ import annotations

import os

import torch


def _grouped(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor:
    """outputs[t] = weights[indices[t]] @ inputs[t], one matmul per distinct index.
    Shapes: inputs [T, in], weights [L, out, in] or [L, 1, out, in], result [T, out]."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    if indices.numel() == 0:
        return inputs.new_zeros((0, weights.shape[1]))
    uniq = torch.unique(indices)
    if uniq.numel() == 1:
        return inputs @ weights[int(uniq[0])].to(dtype).T
    out = torch.empty((inputs.shape[0], weights.shape[1]), dtype=dtype)
    for u in uniq.tolist():
        rows = indices == u
        out[rows] = inputs[rows] @ weights[u].to(dtype).T
    return out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset,
                      slice_size, add_inputs=True):
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs[:]


def register() -> None:
    """Entry point: swap the grouped ops into vLLM's CPU LoRA path and the partial-selection
    top-p sampler into its CPU sampler (engine/student/cpu_sampler.py); no-op elsewhere."""
    if os.environ.get("PERSD_CPU_TOPP_PATCH", "1") != "0":
        from engine.student import cpu_sampler

        cpu_sampler.register()
    if os.environ.get("PERSD_CPU_LORA_PATCH", "1") == "0":
        return
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:  # a vLLM without the CPU LoRA path
        return
    for mod in (lora_ops, punica_cpu):
        # sgmv_* call bgmv_* through lora_ops' globals; punica_cpu imported the names directly
        for name, fn in (("bgmv_expand", bgmv_expand), ("bgmv_shrink", bgmv_shrink),
                         ("bgmv_expand_slice", bgmv_expand_slice)):
            if hasattr(mod, name):
                setattr(mod, name, fn)
