"""The LoRA trainer: completion-only loss, loss goes down, resume after a kill."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import orjson
import pytest

from train.config import TrainConfig
from train.lora import DataError, load_examples, tokenize, train


def write_examples(path, count: int) -> None:
    rows = []
    for i in range(count):
        code = f"def f{i % 7}(x):\n    return x + {i % 7}\n"
        rows.append({"prompt": [{"role": "user", "content": f"Write f{i % 7}(x) returning x + {i % 7}."}],
                     "completion": [{"role": "assistant", "content": f"```python\n{code}```"}]})
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_prompt_tokens_carry_no_loss(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    data = tmp_path / "d.jsonl"
    write_examples(data, 1)
    ex = load_examples(data)[0]
    ids, labels = tokenize(tok, ex, 1024)
    prompt_ids = tok.apply_chat_template(ex["prompt"], tokenize=True, add_generation_prompt=True)
    prompt_ids = list(getattr(prompt_ids, "input_ids", prompt_ids))
    n = len(prompt_ids)
    assert labels[:n] == [-100] * n
    assert labels[n:] == ids[n:] and len(ids) > n
    assert tok.decode(ids[n:]).startswith("```python")
    assert tokenize(tok, ex, 5) is None  # too long: dropped, not truncated


def test_loss_goes_down(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    write_examples(data, 14)
    cfg = TrainConfig(epochs=6, lr=2e-2, batch_tokens=512, save_every=1000)
    adapter = train(data, str(tiny_model), tmp_path / "out", cfg)
    log = [orjson.loads(x) for x in (tmp_path / "out" / "train-log.jsonl").read_bytes().splitlines()]
    assert log[-1]["loss"] < 0.95 * log[0]["loss"]  # a random 2-layer model learns slowly
    assert (adapter / "adapter_config.json").exists()
    assert (tmp_path / "out" / "loss.svg").read_text().startswith("<svg")


def test_resume_after_kill_continues_from_checkpoint(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    write_examples(data, 80)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "train.lora", "--data", str(data), "--model", str(tiny_model),
            "--out", str(out), "--batch_tokens", "64", "--epochs", "1", "--save_every", "5"]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    state = out / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    steps_before = [orjson.loads(x)["step"] for x in (out / "train-log.jsonl").read_bytes().splitlines()]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stderr
    resumed_at = int(done.stderr.split("resumed from step ")[1].split()[0])
    assert resumed_at >= 5 and resumed_at % 5 == 0 and resumed_at <= max(steps_before)
    log = [orjson.loads(x)["step"] for x in (out / "train-log.jsonl").read_bytes().splitlines()]
    assert log == list(range(1, len(log) + 1))  # one row per step, no repeats after the resume
    assert len(log) > resumed_at
    assert (out / "adapter" / "adapter_config.json").exists()


def test_bad_training_file_names_file_and_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'completion'"):
        load_examples(data)


def test_init_adapter_continues_from_its_weights(tiny_model, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "d.jsonl"
    write_examples(data, 8)
    first = train(data, str(tiny_model), tmp_path / "a", TrainConfig(epochs=2, lr=1e-2,
                                                                   batch_tokens=512))
    # lr 0: continued training returns its starting point, a fresh one its zero-initialised B
    same = train(data, str(tiny_model), tmp_path / "b", TrainConfig(
        epochs=1, lr=0.0, batch_tokens=512, init_adapter=str(first)))
    fresh = train(data, str(tiny_model), tmp_path / "c", TrainConfig(epochs=1, lr=0.0,
                                                                   batch_tokens=512))
    w0, w1, w2 = (load_file(str(d / "adapter_model.safetensors")) for d in (first, same, fresh))
    assert w0.keys() == w1.keys() and all((w0[k] == w1[k]).all() for k in w0)
    assert any((w2[k] != w0[k]).any() for k in w0 if "lora_B" in k)
    with pytest.raises(DataError, match="init_adapter"):
        train(data, str(tiny_model), tmp_path / "d", TrainConfig(init_adapter=str(tmp_path)))


def test_export_merges_the_adapter_into_a_plain_model(tiny_model, tmp_path):
    """train.export's directory loads in transformers without PEFT and decodes as base + adapter
    does; the base alone decodes otherwise (the adapter is really in the weights)."""
    import subprocess
    import sys

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "d.jsonl"
    write_examples(data, 14)
    adapter = train(data, str(tiny_model), tmp_path / "out",
                    TrainConfig(epochs=6, lr=2e-2, batch_tokens=512, save_every=1000))
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "train.export", "--model", str(tiny_model),
                           "--adapter", str(adapter), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (out / "adapter_config.json").exists()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Write f3(x) returning x + 3.", return_tensors="pt").input_ids

    def greedy(model) -> list[int]:
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with_adapter = greedy(PeftModel.from_pretrained(base, adapter).merge_and_unload())
    merged = greedy(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    plain = greedy(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    assert merged == with_adapter and merged != plain
    assert json.loads((out / "export.json").read_text())["adapter"] == str(adapter)
    bad = subprocess.run([sys.executable, "-m", "train.export", "--model", str(tiny_model),
                          "--adapter", str(tmp_path), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --adapter:")
