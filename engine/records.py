"""Typed records that cross every stage, process and file boundary.

Each stage reads and writes these (as orjson JSONL in the run directory); no ad-hoc dicts travel
between stages. Records are frozen so a stage cannot quietly edit another stage's output.

    task -> Attempt -> Grade -> Refinement -> (verified Grade) -> Example -> EvalResult
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

# the sandbox's interface records, re-exported: every stage reads and writes them
from sandbox.records import Grade, Program, Status, TestCase

T = TypeVar("T")


@dataclass(frozen=True)
class Task:
    """One coding task, whatever file format it came from.

    `prompt` is the code prompt (imports + signature + docstring, HumanEval style); graded programs
    are `prompt + "\\n" + solution_code`, so imports and helpers in the prompt stay available and the
    solution's own `def` replaces the stub.
    """

    task_id: str
    prompt: str
    entry_point: str
    tests: tuple[TestCase, ...]           # hidden tests that score the task
    seen_tests: tuple[TestCase, ...] = () # tests a model may see feedback from (multi-step)
    setup: str = ""                       # code run before the tests (helpers, imports)
    instruction: str = ""                 # natural-language statement, for chat prompts
    reference: str | None = None          # a full reference solution (code), if known
    source: str = ""                      # where the task came from, "file:line"
    tags: tuple[str, ...] = ()            # e.g. ("strings", "easy")


@dataclass(frozen=True)
class Attempt:
    """One student sample for a task (stage 1)."""

    attempt_id: str        # f"{task_id}#{sample_index}"
    task_id: str
    completion: str        # raw text the model produced
    code: str              # extracted solution code
    adapter: str | None = None     # adapter directory, None = the base model
    model_id: str = ""             # content hash of the model that sampled it
    adapter_id: str | None = None  # content hash of the adapter it ran with (None: no adapter)


@dataclass(frozen=True)
class Refinement:
    """One teacher reply for a failed attempt (stage 3) or a StanD answer (attempt_id is None)."""

    refinement_id: str
    task_id: str
    attempt_id: str | None
    template: str          # prompt template name
    reply: str             # raw teacher text
    code: str | None       # extracted code; None when extraction failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False   # answered from the durable cache, no money spent
    unchanged: bool = False  # the code is the code the teacher was shown, once normalised


@dataclass(frozen=True)
class Example:
    """One training example in TRL's conversational prompt-completion format."""

    example_id: str
    task_id: str
    kind: str                       # persd | persd-refine | stand
    prompt: tuple[dict[str, str], ...]      # chat messages shown to the student
    completion: tuple[dict[str, str], ...]  # the assistant turn that carries the loss


@dataclass(frozen=True)
class EvalResult:
    """pass@k inputs for one task: n samples, c correct."""

    task_id: str
    adapter: str | None
    n: int
    correct: int
    round: int = 0                  # multi-step inference round (0 = first generation)
    statuses: tuple[Status, ...] = ()
    model_id: str = ""              # content hash of the evaluated model
    adapter_id: str | None = None   # content hash of the evaluated adapter (None: base model)
    faulted: int = 0                # samples the executor broke on twice: not in n, no verdict


# --------------------------------------------------------------------------------- serialisation

def to_json(record: Any) -> bytes:
    """Serialise a record (dataclass, possibly nested) to one JSON line without the newline."""
    return orjson.dumps(record)


def _build(tp: Any, value: Any) -> Any:
    """Rebuild a typed value from decoded JSON, following the dataclass annotations."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{tp.__name__}: unknown field(s) {sorted(unknown)}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _build(args[0], value)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_build(inner, v) for v in value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value


def from_json(cls: type[T], line: bytes | str) -> T:
    return _build(cls, orjson.loads(line))


def from_dict(cls: type[T], value: dict) -> T:
    return _build(cls, value)


__all__ = [
    "Status", "TestCase", "Task", "Program", "Grade", "Attempt", "Refinement", "Example",
    "EvalResult", "to_json", "from_json", "from_dict", "field",
]
