"""LoRA (or full) fine-tune on prompt/completion JSONL, in its own process.

The sampling engine and the trainer never share a process: `engine.distill` runs this module with
`subprocess`, so vLLM's memory and threads are not in the way, and a crash here loses nothing but
the steps since the last checkpoint.

    python -m train.lora --data runs/x/persd-combined.jsonl --model ./base --out runs/x/adapter

Data: one JSON object per line, TRL's conversational prompt-completion format:
    {"prompt": [{"role": "user", "content": "..."}], "completion": [{"role": "assistant", ...}]}
Loss is on the completion tokens only (prompt labels are -100).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from common.errors import PersdError
from common.hardware import cpu_bf16
from train.config import TrainConfig


class DataError(PersdError, ValueError):
    """A training data file that cannot be used (names the file and line)."""


def load_examples(path: Path) -> list[dict]:
    """Prompt/completion examples from JSONL, a Parquet file or a `datasets` directory (what
    a run writes under hf/)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        import datasets

        ds = (datasets.load_from_disk(str(path)) if path.is_dir()
              else datasets.Dataset.from_parquet(str(path)))
        missing = [k for k in ("prompt", "completion") if k not in ds.column_names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (has {', '.join(ds.column_names)})")
        if not len(ds):
            raise DataError(f"{path}: no examples")
        return [dict(row) for row in ds]
    out = []
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: malformed JSON ({e})") from None
            for k in ("prompt", "completion"):
                if k not in d:
                    raise DataError(f"{path}:{i}: missing field {k!r}")
            out.append(d)
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def tokenize(tok, ex: dict, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with the prompt masked, or None when longer than max_length."""
    prompt, completion = ex["prompt"], ex["completion"]
    if isinstance(prompt, str):  # plain (non-chat) format
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full = p_ids + tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    else:
        p_ids = tok.apply_chat_template(list(prompt), tokenize=True, add_generation_prompt=True)
        full = tok.apply_chat_template(list(prompt) + list(completion), tokenize=True)
        if hasattr(p_ids, "input_ids") or isinstance(p_ids, dict):
            p_ids, full = p_ids["input_ids"], full["input_ids"]
        if full[:len(p_ids)] != p_ids:
            raise DataError("chat template renders the prompt differently inside the full chat")
    if len(full) > max_length:
        return None
    labels = [-100] * len(p_ids) + full[len(p_ids):]
    return full, labels


def buckets(lengths: list[int], batch_tokens: int, seed: int) -> list[list[int]]:
    """Length-bucketing: sort by length, cut into micro-batches of <= batch_tokens padded tokens,
    then shuffle the batches, so padding stays small and order still varies per epoch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and max(lengths[j] for j in cur + [i]) * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


def _plot(log_rows: list[dict], path: Path) -> None:
    """A dependency-free SVG loss curve."""
    pts = [(r["step"], r["loss"]) for r in log_rows]
    if not pts:
        return
    w, h, pad = 600, 300, 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    sx = lambda x: pad + (x - x0) / max(x1 - x0, 1) * (w - 2 * pad)  # noqa: E731
    sy = lambda y: h - pad - (y - y0) / max(y1 - y0, 1e-9) * (h - 2 * pad)  # noqa: E731
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<polyline fill="none" stroke="steelblue" stroke-width="2" points="{line}"/>'
        f'<text x="{pad}" y="20" font-size="12">training loss: {ys[0]:.3f} -> {ys[-1]:.3f} '
        f'over {xs[-1]} steps</text></svg>')


def train(data: Path, model_path: str, out: Path, cfg: TrainConfig) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train-config.json").write_text(json.dumps(
        {"data": str(data), "model": model_path, **asdict(cfg)}, indent=2))
    tok = AutoTokenizer.from_pretrained(model_path)
    rows = load_examples(data)
    encoded, dropped = [], 0
    for ex in rows:
        e = tokenize(tok, ex, cfg.max_length)
        if e is None:
            dropped += 1
        else:
            encoded.append(e)
    if not encoded:
        raise DataError(f"{data}: every example is longer than max_length={cfg.max_length}")
    use_cuda = torch.cuda.is_available()
    device = "cuda" if use_cuda else "cpu"
    bf16 = {"true": True, "false": False}.get(cfg.bf16)
    if bf16 is None:  # auto: bf16 on CUDA with support, and on CPUs with native bf16 (AVX-512
        # BF16, AMX); emulated bf16 on an AVX2-only CPU is the slowest choice (common/hardware.py)
        bf16 = torch.cuda.is_bf16_supported() if use_cuda else cpu_bf16()
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if cfg.method == "lora" and cfg.init_adapter:
        from peft import PeftModel

        if not Path(cfg.init_adapter, "adapter_config.json").exists():
            raise DataError(f"init_adapter: {cfg.init_adapter} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    elif cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
        for p in model.parameters():  # adapter weights stay fp32: bf16 updates underflow
            if p.requires_grad:
                p.data = p.data.float()
    elif cfg.method != "full":
        raise ValueError(f"train.method: {cfg.method!r} is not lora or full")
    params = [p for p in model.parameters() if p.requires_grad]
    # the transformer body and the output head, called apart (see the loss below)
    body = (model.get_base_model() if cfg.method == "lora" else model).model
    lm_head = model.get_output_embeddings()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = [len(e[0]) for e in encoded]
    per_epoch = len(buckets(lengths, cfg.batch_tokens, 0))
    total_steps = max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(total_steps * cfg.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(
        (s + 1) / max(warmup, 1), max(0.0, (total_steps - s) / max(total_steps - warmup, 1))))

    ckpt = out / "checkpoint"
    step, log_rows = 0, []
    if (ckpt / "state.pt").exists():  # resume after a kill
        state = torch.load(ckpt / "state.pt", weights_only=False)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        for n, v in state["weights"].items():
            trainable[n].data.copy_(v)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, log_rows = state["step"], state["log"]
        if "rng" in state:  # dropout draws continue where they were: a resume trains the same
            torch.set_rng_state(state["rng"])
        # the log restarts from the checkpoint: steps after it were lost with the kill
        (out / "train-log.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in log_rows))
        print(f"[train] resumed from step {step}", file=sys.stderr)

    def save_checkpoint() -> None:
        ckpt.mkdir(exist_ok=True)
        weights = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        tmp = ckpt / "state.pt.tmp"
        torch.save({"weights": weights, "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "log": log_rows, "rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, ckpt / "state.pt")  # a kill mid-save keeps the previous checkpoint

    micro = [b for epoch in range(math.ceil(cfg.epochs))
             for b in buckets(lengths, cfg.batch_tokens, cfg.seed + epoch)]
    micro = micro[: total_steps * cfg.grad_accum]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    t0, tokens_seen = time.monotonic(), 0
    for s in range(step, total_steps):
        opt.zero_grad()
        loss_sum, n_tok = 0.0, 0
        group = micro[s * cfg.grad_accum:(s + 1) * cfg.grad_accum]
        group_tokens = sum(sum(1 for x in encoded[i][1] if x != -100) for b in group for i in b)
        for b in group:
            width = max(lengths[i] for i in b)
            ids = torch.full((len(b), width), pad, dtype=torch.long)
            labels = torch.full((len(b), width), -100, dtype=torch.long)
            mask = torch.zeros((len(b), width), dtype=torch.long)
            for r, i in enumerate(b):
                x, y = encoded[i]
                ids[r, :len(x)], labels[r, :len(y)], mask[r, :len(x)] = (
                    torch.tensor(x), torch.tensor(y), 1)
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            # The vocabulary projection (152k columns for Qwen) is most of the memory: apply it
            # only where a label carries loss, i.e. on completion tokens, in fp32 there.
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
            target = labels[:, 1:]
            keep = target != -100
            logits = lm_head(hidden[:, :-1][keep]).float()
            # sum over completion tokens / tokens in the whole step: equal weight per token
            loss = torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum"
                                                     ) / max(group_tokens, 1)
            loss.backward()
            loss_sum += loss.item()
            n_tok += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step = s + 1
        tokens_seen += n_tok
        dt = time.monotonic() - t0
        row = {"step": step, "loss": loss_sum, "lr": sched.get_last_lr()[0],
               "tokens_per_s": tokens_seen / dt if dt else 0.0, "elapsed_s": dt}
        log_rows.append(row)
        with open(out / "train-log.jsonl", "ab") as f:
            f.write(orjson.dumps(row) + b"\n")
        print(f"[train] step {step}/{total_steps} loss {loss_sum:.4f} "
              f"{row['tokens_per_s']:.0f} tok/s ETA {(total_steps - step) * dt / max(step - 0, 1):.0f}s",
              file=sys.stderr, flush=True)
        if step % cfg.save_every == 0 and step < total_steps:
            save_checkpoint()

    final = out / ("adapter" if cfg.method == "lora" else "model")
    model.save_pretrained(final)
    tok.save_pretrained(final)
    if cfg.method == "lora":
        # PEFT writes target_modules from a set, in hash-seed order: sorted, the same training
        # gives the same bytes, so the adapter's content hash names what it is
        conf = json.loads((final / "adapter_config.json").read_text())
        if isinstance(conf.get("target_modules"), list):
            conf["target_modules"] = sorted(conf["target_modules"])
        (final / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True))
    if cfg.method == "lora" and cfg.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    _plot(log_rows, out / "loss.svg")
    (out / "train-summary.json").write_text(json.dumps({
        "examples": len(rows), "dropped_too_long": dropped, "steps": step,
        "first_loss": log_rows[0]["loss"] if log_rows else None,
        "last_loss": log_rows[-1]["loss"] if log_rows else None,
        "tokens_per_s": log_rows[-1]["tokens_per_s"] if log_rows else None}, indent=2))
    return final


def main(argv: list[str] | None = None) -> None:
    from common.config import add_config_args, config_from_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="prompt/completion JSONL")
    ap.add_argument("--model", required=True, help="base model directory")
    ap.add_argument("--out", required=True, help="output directory (adapter/ lands inside)")
    add_config_args(ap, TrainConfig)   # --config train.toml (what the engine writes), then flags
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args, TrainConfig)
        if not Path(args.data).exists():
            raise DataError(f"--data: {args.data} does not exist")
        print(train(Path(args.data), args.model, Path(args.out), cfg))
    except PersdError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
