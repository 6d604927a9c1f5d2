"""Evaluation is keyed by what was evaluated: two adapters into one output directory get their
own, correct results; an adapter rewritten at the same path is served as its new self."""
from __future__ import annotations

import shutil

import pytest

from engine.config import EvalConfig
from engine.evaluate import evaluate_into
from engine.records import Attempt, EvalResult
from engine.run.store import content_hash, read_view
from engine.tasks import load_tasks
from tests.train.test_train import write_examples


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """Two different LoRA adapters for the tiny model: one trained, one with its B scaled up."""
    from safetensors.torch import load_file, save_file

    from train.config import TrainConfig
    from train.lora import train

    root = tmp_path_factory.mktemp("adapters")
    data = root / "data.jsonl"
    write_examples(data, 8)
    one = train(data, str(tiny_model), root / "train", TrainConfig(epochs=1, lr=5e-3,
                                                                    batch_tokens=512))
    two = root / "two"
    shutil.copytree(one, two)
    weights = load_file(two / "adapter_model.safetensors")
    save_file({k: v * 40 if "lora_B" in k else v for k, v in weights.items()},
              two / "adapter_model.safetensors")
    return one, two


def test_two_adapters_into_one_directory_get_their_own_results(adapters, tiny_model, student_cfg,
                                                             student_pool, tmp_path):
    one, two = adapters
    tasks = load_tasks("builtin-heldout", 3)
    cfg = EvalConfig(n=1, k=(1,), max_tokens=24)
    out = tmp_path / "eval"
    r1 = evaluate_into(out, str(tiny_model), str(one), tasks, cfg, student_cfg, student_pool)
    r2 = evaluate_into(out, str(tiny_model), str(two), tasks, cfg, student_cfg, student_pool)
    assert r1["name"] != r2["name"]
    a1 = read_view(out, f"{r1['name']}-attempts", Attempt)
    a2 = read_view(out, f"{r2['name']}-attempts", Attempt)
    assert {a.adapter_id for a in a1} == {content_hash(one)}
    assert {a.adapter_id for a in a2} == {content_hash(two)}
    assert [a.completion for a in a1] != [a.completion for a in a2], "adapters must differ"
    for name, path in ((r1["name"], one), (r2["name"], two)):
        res = read_view(out, f"{name}-results", EvalResult)
        assert {r.adapter_id for r in res} == {content_hash(path)} and len(res) == 3
    # the second result is what evaluating that adapter alone gives
    alone = evaluate_into(tmp_path / "alone", str(tiny_model), str(two), tasks, cfg,
                          student_cfg, student_pool)
    assert [a.completion for a in read_view(tmp_path / "alone", f"{alone['name']}-attempts",
                                            Attempt)] == [a.completion for a in a2]
    assert alone["pass_at"] == r2["pass_at"]

    # rewrite adapter one's directory with adapter two's weights: the engine must not serve
    # its cached copy of the old adapter under the old path
    moved = tmp_path / "moved"
    shutil.copytree(one, moved)
    shutil.copy(two / "adapter_model.safetensors", moved / "adapter_model.safetensors")
    first = evaluate_into(tmp_path / "p", str(tiny_model), str(moved), tasks, cfg, student_cfg,
                          student_pool)
    shutil.copy(one / "adapter_model.safetensors", moved / "adapter_model.safetensors")
    again = evaluate_into(tmp_path / "p", str(tiny_model), str(moved), tasks, cfg, student_cfg,
                          student_pool)
    assert first["name"] != again["name"] and again["adapter_id"] == content_hash(one)
    got = read_view(tmp_path / "p", f"{again['name']}-attempts", Attempt)
    assert [a.completion for a in got] == [a.completion for a in a1]
