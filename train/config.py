"""The trainer's one config dataclass (TRL style: each field carries its help text).

The paper (Chen et al. 2023, sec. 4) fine-tuned StarCoder/CodeGen students with LoRA, rank 16,
alpha 32, dropout 0.05, lr 1e-4 (PersD) and 2-3 epochs; our defaults follow it, with a max length
that fits HumanEval-size prompts plus one function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check_choices
from common.config import setting as _f


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["lora", "full"] = _f(
        "lora", "lora (adapter only) or full (every weight; no adapter, a model dir)")
    rank: int = _f(16, "LoRA rank r (paper: 16)")
    alpha: int = _f(32, "LoRA alpha; scale = alpha / r (paper: 32)")
    dropout: float = _f(0.05, "LoRA dropout (paper: 0.05)")
    target_modules: tuple[str, ...] = _f(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "module names that get adapters (all linear layers of a Qwen2/Llama block)")
    lr: float = _f(2e-4, "peak learning rate (paper: 1e-4 over many more steps; higher for short runs)")
    warmup_ratio: float = _f(0.1, "fraction of steps with linear warm-up")
    epochs: float = _f(2.0, "passes over the dataset (paper: 2-3)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0 = as many as epochs give)")
    batch_tokens: int = _f(2048, "tokens per micro-batch, after length-bucketing")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(1024, "longest example in tokens; longer ones are dropped (and counted)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    bf16: Literal["auto", "true", "false"] = _f(
        "auto", "auto (bf16 where the CPU/GPU supports it), true or false")
    gradient_checkpointing: bool = _f(False, "recompute activations to save memory")
    save_every: int = _f(20, "checkpoint every N optimizer steps (resume point after a kill)")
    seed: int = _f(0, "data order and adapter init seed")
    merge: bool = _f(False, "also write a merged model directory (base + adapter)")
    init_adapter: str = _f("", "LoRA adapter directory to continue training from (online PersD "
                           "rounds); its rank and modules replace rank/alpha/target_modules")

    def __post_init__(self) -> None:
        check_choices(self, "train")
