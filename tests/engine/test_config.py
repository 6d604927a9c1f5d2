"""The config tree: TOML + CLI overrides, unknown keys and bad values are errors naming the key."""
from __future__ import annotations

import argparse

import pytest

from engine.config import RunConfig, TeacherConfig, add_config_args, config_from_args
from engine.models import resolve_model
from train.config import TrainConfig


def parse(argv):
    ap = argparse.ArgumentParser()
    add_config_args(ap)
    return config_from_args(ap.parse_args(argv))


def test_defaults_file_and_cli_layers(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "persd"\n[student]\nmax_tokens = 100\n'
                    '[eval]\nk = [1, 5]\nn = 10\ntemperature = 0.8\n')
    cfg = parse(["--config", str(toml), "--student.max_tokens", "200"])
    assert cfg.dataset == "persd" and cfg.student.max_tokens == 200 and cfg.eval.k == (1, 5)
    assert parse([]) == RunConfig()


@pytest.mark.parametrize("text, message", [
    ("[student]\nmax_tokenz = 1\n", "student.max_tokenz"),
    ("[eval]\nn = 'many'\n", "eval.n"),
    ('dataset = "everything"\n', "dataset"),
    ("[eval]\nn = 1\nk = [5]\n", "eval.k"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    toml = tmp_path / "run.toml"
    toml.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse(["--config", str(toml)])


def test_model_path_that_does_not_exist():
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        resolve_model("/no/such/model")


def test_greedy_with_several_samples_is_refused():
    with pytest.raises(ValueError, match="eval.n: greedy"):
        parse(["--eval.n", "4", "--eval.k", "1"])
    with pytest.raises(ValueError, match="student.samples: greedy"):
        parse(["--student.samples", "2"])
    assert parse(["--student.samples", "2", "--student.temperature", "0.8"]).student.samples == 2


def test_configs_round_trip_through_toml(tmp_path):
    """The engine hands the trainer its settings as a TOML file (train never imports engine)."""
    from common.config import dump_toml, load_toml
    from train.config import TrainConfig

    for cfg in (RunConfig(), TrainConfig(lr=1e-4, target_modules=("q_proj",),
                                         init_adapter='odd "path"\\x')):
        path = tmp_path / "c.toml"
        path.write_text(dump_toml(cfg))
        assert load_toml(path, type(cfg)) == cfg
    path.write_text("rank = 'sixteen'\n")
    with pytest.raises(ValueError, match=r"c\.toml: rank: cannot use 'sixteen' as int"):
        load_toml(path, TrainConfig)


@pytest.mark.parametrize("argv, message", [
    (["-m", "engine.evaluate", "--tasks", "/no/such/tasks.jsonl", "--model", "/no/such/model"],
     "error: task file /no/such/tasks.jsonl does not exist"),
    (["-m", "train.lora", "--data", "/no/such.jsonl", "--model", "m", "--out", "/tmp/x"],
     "error: --data: /no/such.jsonl does not exist"),
    (["-m", "train.lora", "--data", "d", "--model", "m", "--out", "o", "--rank", "x"],
     "error: rank: cannot use 'x' as int"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("build, message", [
    (lambda: parse(["--student.prompt_format", "chatt"]),
     "student.prompt_format: 'chatt' is not one of chat, completion"),
    (lambda: parse(["--dataset", "persd-refined"]), "dataset: 'persd-refined' is not one of persd"),
    (lambda: parse(["--train.method", "lroa"]), "train.method: 'lroa' is not one of lora, full"),
    (lambda: TrainConfig(bf16="yes"), "train.bf16: 'yes' is not one of auto, true, false"),
    (lambda: TeacherConfig(api="chat-completions"), "teacher.api: 'chat-completions' is not one"),
    (lambda: parse(["--student.resources", "student"]),
     "student.resources: 'student' is not NAME=AMOUNT with AMOUNT > 0"),
    (lambda: parse(["--cluster.sandbox_resources", "sandbox=0"]),
     "cluster.sandbox_resources: 'sandbox=0' is not NAME=AMOUNT with AMOUNT > 0"),
    (lambda: parse(["--data.columns", "prompt=question,tests="]),
     "data.columns: 'tests=' is not FIELD=COLUMN"),
    (lambda: parse(["--data.synthesize", "true", "--online_rounds", "2"]),
     "data.synthesize: online rounds take fresh tasks from the whole pool"),
    (lambda: parse(["--student.engine_process", "inline", "--student.tensor_parallel_size", "2"]),
     "student.engine_process: inline runs one worker; tensor_parallel_size 2 needs separate"),
])
def test_choices_are_checked_by_their_literal_type(build, message):
    """A Literal-typed field is checked wherever the record is made: file, flag or Python."""
    with pytest.raises(ValueError, match=message):
        build()


def test_a_setting_added_since_counts_as_its_default():
    """A run directory made before a setting existed resumes as unchanged, unless the setting is
    now given another value."""
    import json

    from engine.config import to_dict
    from engine.distill import changed_settings

    old = json.loads(json.dumps(to_dict(RunConfig())))
    del old["teacher"]["server_timeout_s"], old["data"]["decontaminate"]
    assert changed_settings(old, json.loads(json.dumps(to_dict(RunConfig())))) == []
    new = json.loads(json.dumps(to_dict(parse(["--data.decontaminate", "humaneval"]))))
    assert changed_settings(old, new) == ["data.decontaminate: '' -> 'humaneval'"]
