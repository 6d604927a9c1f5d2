"""The config tree: TOML + CLI overrides, unknown keys and bad values are errors naming the key."""
from __future__ import annotations

import argparse

import pytest

from engine.config import RunConfig, add_config_args, config_from_args
from engine.models import resolve_model


def parse(argv):
    ap = argparse.ArgumentParser()
    add_config_args(ap)
    return config_from_args(ap.parse_args(argv))


def test_defaults_file_and_cli_layers(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "persd"\n[student]\nmax_tokens = 100\n[eval]\nk = [1, 5]\nn = 10\ntemperature = 0.8\n')
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
