"""Stage 6, train: the LoRA fine-tune, in its own process (never sharing one with vLLM), resumable
from its checkpoint and reused under the same fingerprint."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from common.config import dump_toml
from common.errors import TrainerFailed
from engine.config import RunConfig
from engine.run import faults
from engine.run.store import content_hash, fingerprint


def train_adapter(cfg: RunConfig, data: Path, model: str, model_id: str, out: Path) -> Path:
    """The trainer runs as its own process (never sharing one with vLLM).

    `out/train-fingerprint.txt` names what the training is of: the dataset's bytes, the train
    settings and the base model's content hash. A finished adapter (train-summary.json written
    last) is reused, and a killed training resumes from its checkpoint, only under the same
    fingerprint; a directory made under another one is moved aside to `train.<fingerprint>`.
    """
    parts = [hashlib.sha256(data.read_bytes()).hexdigest(), asdict(cfg.train), model_id]
    if cfg.train.init_adapter:  # continued training: what it continues from, by content
        parts.append(content_hash(cfg.train.init_adapter))
    fp = fingerprint("train", *parts)
    mark = out / "train-fingerprint.txt"
    if out.exists() and (not mark.exists() or mark.read_text().strip() != fp):
        old = mark.read_text().strip()[:12] if mark.exists() else "unmarked"
        aside = out.with_name(f"{out.name}.{old}")
        if aside.exists():
            shutil.rmtree(aside)
        out.rename(aside)
        print(f"[train] {out} was trained on other data or settings: moved to {aside}",
              file=sys.stderr, flush=True)
    if mark.exists() and (out / "train-summary.json").exists() and \
            (out / "adapter" / "adapter_config.json").exists():
        return out / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(fp + "\n")
    # the trainer reads its own config file; it never imports the engine's config
    (out / "train.toml").write_text(dump_toml(cfg.train))
    args = [sys.executable, "-m", "train.lora", "--data", str(data), "--model", model,
            "--out", str(out), "--config", str(out / "train.toml")]
    returncode, node = _run_trainer(args, out / "train-log.jsonl", cfg.cluster)
    (out / "trained-on.txt").write_text(node + "\n")   # the Ray node ("" outside Ray)
    if returncode != 0:
        raise TrainerFailed(f"trainer failed with exit code {returncode} (command: "
                           f"{' '.join(args)})")
    return out / "adapter"


def _run_trainer(args: list[str], log: Path, cluster) -> tuple[int, str]:
    """The trainer as the driver's subprocess, or as a Ray task on a node offering
    `cluster.trainer_resources` (engine/cluster.py); (exit code, node id)."""
    from engine.cluster import node_id, remote_process

    env = {"TOKENIZERS_PARALLELISM": "false"}
    remote = bool(cluster.trainer_resources)
    if remote:
        import ray

        ref = remote_process(args, env, cluster)
    else:
        proc = subprocess.Popen(args, env={**os.environ, **env})
    stepped = False
    while True:
        if remote:
            if ray.wait([ref], timeout=0.2)[0]:
                return ray.get(ref)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.2)
        if not stepped and log.exists() and log.stat().st_size > 0:
            stepped = True
            faults.point("train-step")
    return proc.returncode, node_id()
