"""Unit tests for tasks that have none, synthesised and then checked (the paper's method for its
10K CodeAlpaca tasks, plus the checks it lacked).

    inputs    the teacher proposes calls of the entry point (inputs only, never expected values);
              a line that is not a call of it with literal arguments is dropped, with a reason
    outputs   the reference runs each call in the sandbox, twice: a call that raises, times out,
              differs between the runs, or returns something without a strict encoding
              (sandbox/values.py) or a short literal is dropped; the rest become
              `assert CALL == EXPECTED` tests
    check     the reference must pass the tests it produced, and the tests must kill
              `synth.min_kill` of the reference's mutants (engine/tasks/mutants.py: flipped
              comparisons, off-by-one, swapped operators, `return None`, dropped branches)
    cross     optional: the teacher's own solution runs on the same inputs; where it and the
              reference disagree the task is flagged (one of them, or the task, is wrong)

A task without a reference gets `synth.votes` teacher solutions instead; an input is kept when
more than `synth.agree` of them (default half) agree on its output, and the first solution that
agrees on every kept input becomes the task's reference (marked `teacher-majority`).

Every teacher reply goes through the teacher cache and every sandbox run through the run store,
so a rerun into the same directory resumes and pays for nothing twice.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import orjson

from engine import prompts, stages
from engine.config import SynthConfig
from engine.records import Program, Refinement, Task, TestCase
from engine.run.store import RunStore
from engine.stages.refine import TeacherJob
from engine.tasks.mutants import kill_reports, mutant_programs
from sandbox import values

# Names a proposed call may use besides the entry point: literal-building builtins.
SAFE_NAMES = frozenset({"True", "False", "None", "list", "tuple", "set", "dict", "frozenset",
                        "range", "str", "int", "float", "bool", "bytes", "sorted", "reversed",
                        "len", "abs", "min", "max", "sum", "chr", "ord", "inf", "nan"})
MAX_CALL_CHARS = 300


@dataclass(frozen=True)
class InputsJob(TeacherJob):
    """A teacher request for test inputs (its reply's calls are parsed, never trusted)."""

    count: int = 8

    def messages(self) -> list[dict[str, str]]:
        return prompts.inputs_messages(self.task, self.count)


@dataclass
class TaskReport:
    """What synthesis did with one task (one line of synthesis.jsonl)."""

    task_id: str
    reference: str = "given"         # given | teacher-majority | none
    proposed: int = 0                # calls parsed from the teacher's reply
    kept: int = 0                    # tests written
    dropped: dict[str, int] = field(default_factory=dict)   # reason -> calls
    mutants: int = 0
    killed: int = 0
    kill_rate: float | None = None
    flagged: list[str] = field(default_factory=list)         # calls where the solutions disagree
    status: str = "kept"             # kept | too-few-tests | weak-tests | flagged | no-majority
                                     # | reference-fails | no-reply


# ----------------------------------------------------------------------------- the inputs

def parse_calls(text: str, entry_point: str) -> tuple[list[str], Counter]:
    """Calls of `entry_point` in a teacher reply (normalised, deduplicated, in order), and why
    the other lines were dropped."""
    blocks = [m.group(2) for m in prompts.FENCE.finditer(text)] or [text]
    calls, why = [], Counter()
    for line in "\n".join(blocks).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^>>>\s*", "", line)
        try:
            node = ast.parse(line, mode="eval").body
        except SyntaxError:
            try:   # an assert despite the instructions: keep its call, never its expected value
                stmt = ast.parse(line).body[0]
            except (SyntaxError, IndexError):
                why["not Python"] += 1
                continue
            if isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Compare):
                node = stmt.test.left
            else:
                why["not a call"] += 1
                continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "print" and len(node.args) == 1:
            node = node.args[0]
        root = node
        while isinstance(root, (ast.Call, ast.Attribute, ast.Subscript)):
            root = root.func if isinstance(root, ast.Call) else root.value
        if not (isinstance(node, (ast.Call, ast.Attribute, ast.Subscript))
                and isinstance(root, ast.Name) and root.id == entry_point):
            why["not a call of the entry point"] += 1
            continue
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - {entry_point}
        if names - SAFE_NAMES or any(isinstance(n, (ast.Lambda, ast.NamedExpr))
                                     for n in ast.walk(node)):
            why["uses names the task does not define"] += 1
            continue
        call = ast.unparse(node)
        if len(call) > MAX_CALL_CHARS:
            why["too long"] += 1
        elif call in calls:
            why["duplicate"] += 1
        else:
            calls.append(call)
    return calls, why


# ----------------------------------------------------------------------------- the outputs

def probe(task: Task, code: str, call: str, pid: str, timeout_s: float) -> Program:
    """A program that runs `code` on one call and returns its output (Program.outputs); its
    test's verdict is not used."""
    return Program(pid, prompts.program_code(task, code), (TestCase(f"assert {call} == None",
                                                                    call, "None"),),
                   task.setup, timeout_s, outputs=True)


def literal(encoded: list, max_chars: int) -> tuple[str | None, str]:
    """(a Python literal for the encoded output, "") or (None, why not)."""
    if values.tags(encoded) & {"opaque", "ref", "toolarge"}:
        return None, "no stable representation"
    try:
        value = values.decode(encoded, _no_refs)
    except ValueError:
        return None, "no stable representation"
    text = repr(value)
    if len(text) > max_chars:
        return None, "output too long for a test"
    try:   # the literal must evaluate back to the same strict encoding
        again = _evaluate(text)
    except Exception:   # noqa: BLE001 - nan, inf and friends have no literal
        return None, "no literal form"
    if not values.equal(values.encode(again), encoded):
        return None, "no literal form"
    return text, ""


def _evaluate(literal_text: str):
    """A literal written by `literal` (the repr of builtin values: no names but these)."""
    return eval(literal_text, {"__builtins__": {}, "set": set, "frozenset": frozenset})


def _no_refs(encoded: list):
    raise ValueError("a reference")


def _canonical(encoded: list) -> bytes:
    return orjson.dumps(encoded)


# ----------------------------------------------------------------------------- the run

class Synthesizer:
    """One synthesis run into `run` (a RunStore) with a teacher client and a sandbox pool."""

    def __init__(self, cfg: SynthConfig, run: RunStore, teacher, sandbox) -> None:
        self.cfg, self.run, self.teacher, self.sandbox = cfg, run, teacher, sandbox
        self.replies: list[Refinement] = []   # every teacher reply used, for the token count

    def __call__(self, tasks: Sequence[Task]) -> tuple[list[Task], list[TaskReport]]:
        cfg = self.cfg
        reports = {t.task_id: TaskReport(t.task_id, "given" if t.reference else "none")
                   for t in tasks}
        replies = self._ask("synth-inputs", [InputsJob(t, None, "test-inputs", count=cfg.inputs)
                                             for t in tasks])
        calls: dict[str, list[str]] = {}
        for t in tasks:
            reply = replies.get(f"{t.task_id}>test-inputs")
            if reply is None:
                reports[t.task_id].status = "no-reply"
                continue
            calls[t.task_id], why = parse_calls(reply.reply, t.entry_point)
            reports[t.task_id].proposed = len(calls[t.task_id])
            reports[t.task_id].dropped.update(why)
        # tasks without a reference: the teacher's solutions vote on each output
        voters = [t for t in tasks if not t.reference and t.task_id in calls]
        solutions = self._ask("synth-votes", [
            TeacherJob(t, None, "answer", chains=tuple(range(cfg.votes)),
                       sampling=(("temperature", cfg.vote_temperature),)) for t in voters])
        cross = {}
        if cfg.cross_check:
            cross = self._ask("synth-cross", [TeacherJob(t, None, "answer",
                                                         sampling=(("temperature", 0.0),))
                                              for t in tasks if t.reference and t.task_id in calls])
        out: list[Task] = []
        given = [t for t in tasks if t.reference and t.task_id in calls]
        outputs = self._outputs(given, calls, runs=2)
        voted = self._votes(voters, calls, solutions, reports)
        tested: list[Task] = []
        for t in given:
            tests = self._tests(t, calls[t.task_id], outputs, reports[t.task_id])
            if tests is not None:
                tested.append(dataclasses.replace(t, tests=tests, seen_tests=()))
        tested += voted
        tested = self._check(tested, reports)
        flagged = self._cross(tested, cross, reports) if cfg.cross_check else set()
        for t in tested:
            r = reports[t.task_id]
            if t.task_id in flagged:
                r.status = "flagged"
                if not cfg.keep_flagged:
                    continue
            out.append(t)
        return out, [reports[t.task_id] for t in tasks]

    # -------------------------------------------------------------------------- steps
    def _ask(self, name: str, jobs: list[TeacherJob]) -> dict[str, Refinement]:
        got = stages.refine_stage(self.run, name, self.teacher, jobs, "synth") if jobs else {}
        self.replies += got.values()
        return got

    def _outputs(self, tasks: Sequence[Task], calls: dict[str, list[str]], runs: int,
                 code: dict[str, list[tuple[str, str]]] | None = None
                 ) -> dict[str, tuple]:
        """program id -> (status, encoded output or None), for each call of each task run
        `runs` times on its reference (or on each of `code[task_id]`'s (tag, code))."""
        progs = []
        for t in tasks:
            for i, call in enumerate(calls[t.task_id]):
                for tag, src in (code or {}).get(t.task_id, [("ref", t.reference)]):
                    for r in range(runs):
                        progs.append(probe(t, src, call, f"{t.task_id}?{i}@{tag}#{r}",
                                           self.cfg.timeout_s))
        grades = stages.programs_stage(self.run, "synth-outputs", self.sandbox, progs)
        return {pid: (g.status, g.outputs[0] if g.outputs else None)
                for pid, g in grades.items()}

    def _tests(self, t: Task, calls: list[str], outputs: dict, report: TaskReport
               ) -> tuple[TestCase, ...] | None:
        tests, why = [], Counter()
        for i, call in enumerate(calls):
            (s0, o0), (s1, o1) = outputs[f"{t.task_id}?{i}@ref#0"], outputs[f"{t.task_id}?{i}@ref#1"]
            if o0 is None or o1 is None:   # the call raised, or the run ended before it answered
                status = s0 if o0 is None else s1
                why["raised" if status.value == "error" else f"reference {status.value}"] += 1
                continue
            if _canonical(o0) != _canonical(o1):
                why["nondeterministic"] += 1
                continue
            expected, reason = literal(o0, self.cfg.max_expected_chars)
            if expected is None:
                why[reason] += 1
                continue
            if len(tests) < self.cfg.max_tests:
                tests.append(TestCase(f"assert {call} == {expected}", call, expected))
        for k, v in why.items():
            report.dropped[k] = report.dropped.get(k, 0) + v
        report.kept = len(tests)
        if len(tests) < self.cfg.min_tests:
            report.status = "too-few-tests"
            return None
        return tuple(tests)

    def _votes(self, tasks: Sequence[Task], calls: dict[str, list[str]],
               solutions: dict[str, Refinement], reports: dict[str, TaskReport]) -> list[Task]:
        """Tasks without a reference: tests where most of the teacher's solutions agree."""
        code = {t.task_id: [(f"v{j}", solutions[f"{t.task_id}>stand.{j}"].code)
                            for j in range(self.cfg.votes)
                            if f"{t.task_id}>stand.{j}" in solutions
                            and solutions[f"{t.task_id}>stand.{j}"].code]
                for t in tasks}
        outputs = self._outputs([t for t in tasks if code[t.task_id]], calls, 1, code)
        out = []
        for t in tasks:
            report, tests, agreed = reports[t.task_id], [], []
            sols = code[t.task_id]
            for i, call in enumerate(calls[t.task_id]):
                got = {tag: outputs[f"{t.task_id}?{i}@{tag}#0"][1] for tag, _ in sols}
                counts = Counter(_canonical(o) for o in got.values() if o is not None)
                top, n = counts.most_common(1)[0] if counts else (None, 0)
                if n <= self.cfg.agree * self.cfg.votes:
                    report.dropped["no majority"] = report.dropped.get("no majority", 0) + 1
                    continue
                expected, reason = literal(orjson.loads(top), self.cfg.max_expected_chars)
                if expected is None:
                    report.dropped[reason] = report.dropped.get(reason, 0) + 1
                    continue
                agreed.append({tag for tag, o in got.items() if o is not None
                               and _canonical(o) == top})
                if len(tests) < self.cfg.max_tests:
                    tests.append(TestCase(f"assert {call} == {expected}", call, expected))
            report.kept = len(tests)
            winner = next((src for tag, src in sols if all(tag in a for a in agreed)), None)
            if len(tests) < self.cfg.min_tests:
                report.status = "too-few-tests"
            elif winner is None:
                report.status = "no-majority"
            else:
                report.reference = "teacher-majority"
                out.append(dataclasses.replace(t, tests=tuple(tests), seen_tests=(),
                                               reference=winner))
        return out

    def _check(self, tasks: list[Task], reports: dict[str, TaskReport]) -> list[Task]:
        """The reference passes its tests together; the tests kill enough of its mutants."""
        whole = stages.programs_stage(self.run, "synth-reference", self.sandbox, [
            Program(f"{t.task_id}@ref", prompts.program_code(t, t.reference), t.tests, t.setup,
                    self.cfg.timeout_s * len(t.tests)) for t in tasks])
        ok = []
        for t in tasks:
            if not whole[f"{t.task_id}@ref"].passed:
                reports[t.task_id].status = "reference-fails"
            else:
                ok.append(t)
        if not self.cfg.min_kill:
            return ok
        jobs = mutant_programs(ok, self.cfg.mutants, self.cfg.timeout_s)
        grades = stages.programs_stage(self.run, "synth-mutants", self.sandbox,
                                       [p for _, _, p in jobs])
        kept = []
        for k in kill_reports(ok, [(tid, m, grades[p.program_id]) for tid, m, p in jobs]):
            r = reports[k.task_id]
            r.mutants, r.killed, r.kill_rate = k.mutants, k.killed, k.rate
            if k.rate is not None and k.rate < self.cfg.min_kill:
                r.status = "weak-tests"
            else:
                kept.append(next(t for t in ok if t.task_id == k.task_id))
        return kept

    def _cross(self, tasks: list[Task], cross: dict[str, Refinement],
               reports: dict[str, TaskReport]) -> set[str]:
        """Tasks where the teacher's own solution and the reference disagree on some input."""
        def solution(t: Task) -> str | None:
            answer = cross.get(f"{t.task_id}>stand")
            return answer.code if answer else None

        mine = [t for t in tasks if reports[t.task_id].reference == "given" and solution(t)]
        calls = {t.task_id: [tc.call for tc in t.tests] for t in mine}
        code = {t.task_id: [("x", solution(t))] for t in mine}
        outputs = self._outputs(mine, calls, 1, code)
        flagged = set()
        for t in mine:
            for i, tc in enumerate(t.tests):
                got = outputs[f"{t.task_id}?{i}@x#0"][1]
                expected = values.encode(_evaluate(tc.expected))
                if got is None or not values.equal(got, expected):
                    reports[t.task_id].flagged.append(tc.call)
            if reports[t.task_id].flagged:
                flagged.add(t.task_id)
        return flagged


# ----------------------------------------------------------------------------- files

def task_line(t: Task, report: TaskReport, teacher: str) -> dict:
    """A task in the plain format (README "Task format"), with how its tests were made."""
    return {"task_id": t.task_id, "prompt": t.prompt, "entry_point": t.entry_point,
            "tests": [{"call": tc.call, "expected": tc.expected} for tc in t.tests],
            "seen_tests": [], "setup": t.setup, "instruction": t.instruction,
            "reference": t.reference,
            "synthesized": {"teacher": teacher, "reference": report.reference,
                            "kill_rate": report.kill_rate, "flagged": report.flagged}}


def write_outputs(out: Path, tasks: Sequence[Task], reports: Sequence[TaskReport],
                  teacher: str, cost: dict) -> dict:
    """tasks.jsonl, synthesis.jsonl and summary.json into `out`; returns the summary."""
    by_id = {r.task_id: r for r in reports}
    with open(out / "tasks.jsonl", "w") as fh:
        for t in tasks:
            fh.write(json.dumps(task_line(t, by_id[t.task_id], teacher)) + "\n")
    with open(out / "synthesis.jsonl", "w") as fh:
        for r in reports:
            fh.write(json.dumps(dataclasses.asdict(r)) + "\n")
    rates = [r.kill_rate for r in reports if r.status == "kept" and r.kill_rate is not None]
    dropped: Counter = Counter()
    for r in reports:
        dropped.update(r.dropped)
    summary = {"tasks": len(reports), "kept": len(tasks),
               "status": dict(Counter(r.status for r in reports)),
               "tests_kept": sum(len(t.tests) for t in tasks),
               "calls_proposed": sum(r.proposed for r in reports),
               "calls_dropped": dict(dropped),
               "mean_kill_rate": round(sum(rates) / len(rates), 4) if rates else None,
               "by_reference": dict(Counter(by_id[t.task_id].reference for t in tasks)),
               "teacher": cost}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def synthesize_into(cfg, run: RunStore, sandbox, tasks: Sequence[Task], out: Path,
                    timed=None, this_run: bool = False) -> tuple[list[Task], dict]:
    """Synthesis as `python -m engine.synthesize` and a run's first step both do it: the
    teacher `cfg` names (a local server is started and stopped here), the cache in the run's
    directory, the outputs written into `out`; returns the kept tasks and the summary. The
    tokens are those of every reply used, whether paid now or by an earlier invocation;
    `this_run` adds what this invocation sent (differs between a run and its resume)."""
    import asyncio

    from engine.teacher import Usage
    from engine.teacher.endpoint import teacher_endpoint

    with teacher_endpoint(cfg, run, timed) as endpoint:
        teacher = endpoint.teacher(cfg.teacher, Path(run.path) / "teacher-cache.jsonl")
        asyncio.run(teacher.check_reachable())
        synth = Synthesizer(cfg.synth, run, teacher, sandbox)
        kept, reports = synth(tasks)
    pt = sum(r.prompt_tokens for r in synth.replies)
    ct = sum(r.completion_tokens for r in synth.replies)
    cost = {"model": endpoint.model, "prompt_tokens": pt, "completion_tokens": ct,
            "cost_usd": round(teacher.cost(pt, ct), 6)}
    if this_run:
        cost |= {"calls_sent_this_run": teacher.calls,
                 "answered_from_cache": teacher.usage.get("synth", Usage()).cached,
                 "spent_usd_this_run": round(teacher.spent_usd, 6)}
    out.mkdir(parents=True, exist_ok=True)
    return kept, write_outputs(out, kept, reports, endpoint.model, cost)
