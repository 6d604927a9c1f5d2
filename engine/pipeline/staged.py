"""One pass of personalised distillation as a sequence of stage calls, in the order data flows.

    inputs   = load()                     0 setup: tasks (decontaminated; tests synthesised where
                                            data.synthesize asks), seen tests, the student
    attempts = attempt(inputs)            1-2 the student tries every task; the sandbox grades
    before   = evaluate("eval-before")    7a the base student on the held-out set
    teacher  = refine(failures)           3 the teacher rectifies the failures (+ StanD answers)
    verified = verify(teacher)            4 every refinement graded against the same tests
    datasets = build(verified)            5 PersD, PersD-refine, PersD-combined, StanD, InpD
    adapter  = train(datasets)            6 LoRA fine-tune in its own process
    after    = evaluate("eval-after")     7b the student with its adapter
               online(...)                   optional online rounds (engine/pipeline/online.py)
    summary.json                          8 report

Each step is a stage of `engine/stages/` through the run store, so a resumed run skips what is
done. The student engine is released before the teacher starts (their cores and memory are the
same ones on a small machine), and started again, lazily, only if a later step samples.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from common.errors import ConfigError, EmptyDataset
from engine import stages
from engine.config import RunConfig
from engine.records import Attempt, Example, Grade, Refinement, Task
from engine.run import runlog
from engine.run.store import RunStore
from engine.stages import personal
from engine.summary import AttemptCounts, EvalInfo, RunSummary, StudentInfo, TeacherCounts, TeacherSummary

# Training tasks per student submission: large enough that vLLM's continuous batching stays
# full (a 64-task batch waited for its slowest sample before the next began), small enough that
# a kill loses little (the batch commits as one transaction).
ATTEMPT_BATCH = 256


NOT_COUNTS = {"price_per_mtok"}   # summary fields that are settings, not counts


def add_counts(a, b):
    """b added to a, field by field (numbers summed, dicts by key, lists by position, anything
    else taken from b): a summary's counts over the windows of a pass. `a` None: b."""
    if a is None:
        return b
    if isinstance(b, bool) or isinstance(b, str) or b is None:
        return b
    if isinstance(b, (int, float)):
        return round(a + b, 6) if isinstance(b, float) else a + b
    if isinstance(b, dict):
        return {k: add_counts(a.get(k), v) for k, v in b.items()} | {
            k: v for k, v in a.items() if k not in b}
    if isinstance(b, list):
        longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
        return [add_counts(x, shorter[i]) if i < len(shorter) else x
                for i, x in enumerate(longer)]
    if dataclasses.is_dataclass(b):
        return dataclasses.replace(b, **{
            f.name: getattr(b, f.name) if f.name in NOT_COUNTS
            else add_counts(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(b)})
    return b


@contextmanager
def timed(timings: dict[str, float], name: str):
    t0 = time.monotonic()
    print(f"== {name}", file=sys.stderr, flush=True)
    runlog.event(name, "stage-start")
    yield
    timings[name] = round(timings.get(name, 0.0) + time.monotonic() - t0, 1)
    runlog.event(name, "stage-end", seconds=round(time.monotonic() - t0, 3))


@dataclass(frozen=True)
class Inputs:
    """What every stage reads: the training and held-out tasks and the student's identity."""

    train_tasks: list[Task]
    eval_tasks: list[Task]
    student_dir: str
    student_id: str          # content hash of the student's weights

    @property
    def tasks(self) -> dict[str, Task]:
        return {t.task_id: t for t in self.train_tasks}


@dataclass(frozen=True)
class Attempts:
    """Stages 1-2: every attempt and its grade."""

    attempts: dict[str, Attempt]
    grades: dict[str, Grade]

    @property
    def failed(self) -> list[Attempt]:
        return [a for a in self.attempts.values() if self.grades[a.attempt_id].failed]


@dataclass
class TeacherWork:
    """Stage 3: the refinements (all rounds), the StanD answers, and the jobs that asked them."""

    teacher: object                  # engine.teacher.Teacher (its usage and prices)
    model: str
    identity: str
    refinements: list[Refinement]
    stand: list[Refinement]
    rounds: list[list[stages.TeacherJob]]
    stand_jobs: list[stages.TeacherJob]


class Pipeline:
    """The run's stages with the parts they share: the run store, the sandbox pool, the student
    pool, the stage clock and the summary."""

    def __init__(self, cfg: RunConfig, run: RunStore, student_pool=None):
        from engine.cluster import sandbox_service

        self.cfg, self.run = cfg, run
        self.timings: dict[str, float] = {}
        self.summary = RunSummary(run_dir=str(run.path), dataset=cfg.dataset)
        # in the driver, or a Ray actor on a node offering cluster.sandbox_resources
        self.sandbox = sandbox_service(cfg.sandbox, cfg.cluster)
        self.pool = student_pool
        self.own_pool = student_pool is None
        self.windows_done = 0
        runlog.set_event_log(run.path / "events.jsonl")   # stage and progress events, JSONL

    def clock(self, name: str):
        return timed(self.timings, name)

    # ---------------------------------------------------------------------------------- the pass
    def __call__(self) -> RunSummary:
        cfg = self.cfg
        before = None
        try:
            inputs = self.load()
            last = None
            for win in self.windows(inputs):
                last = tried = work = verified = datasets = None   # free the previous window first
                if cfg.execution == "streaming":
                    tried, b, work = self.stream(win)
                else:
                    tried = self.attempt(win)
                    # evaluated once: later windows have the same held-out set
                    b = before or self.evaluate(win, "eval-before")
                    if not cfg.teacher.base_url:   # the local teacher server needs the cores
                        self.release_student()
                    work = self.refine(win, tried)
                before = before or b
                verified = self.verify(win, work)
                datasets = self.build(win, tried, work, verified)
                self.report_data(win, tried, work, verified, datasets, before)
                last = (win, tried, work, verified, datasets)
            self.finish_windows()
            self.release_student()      # the trainer's turn (a later evaluation restarts it)
            if not cfg.skip_train:
                adapter = self.train(inputs)
                after = self.evaluate(inputs, "eval-after", adapter)
                self.report_after(adapter, after)
                if cfg.online_rounds:
                    self.online(*last, adapter, after)
        finally:
            # programs the executor broke on were re-run once and are counted apart, never as
            # student failures; tests judged inside the program (class protocols) are counted
            self.summary.sandbox = asdict(self.sandbox.stats)
            self.summary.placement = self.placement()
            self.sandbox.close()
            if self.own_pool and self.pool is not None:
                self.pool.close()
            runlog.set_event_log(None)
        return self.write_summary(inputs, before)

    # ------------------------------------------------------------------------------------ stages
    def load(self) -> Inputs:
        """0: the held-out set, the student, and the training pool as a stream (read window by
        window: `windows`), less what overlaps the eval sets."""
        from engine.models import model_identity, resolve_model
        from engine.student import LazyPool
        from engine.tasks import load_tasks
        from engine.tasks.docstring_tests import verify_seen_tests
        from engine.tasks.overlap import iter_pool

        data = self.cfg.data
        with self.clock("0-setup"):
            self.pool_tasks, self.overlap = iter_pool(
                data.train_tasks, data.train_limit, data.decontaminate, data.columns,
                require_tests=not data.synthesize)
            eval_tasks = verify_seen_tests(load_tasks(data.eval_tasks, data.eval_limit,
                                                      verify_seen=False, columns=data.columns),
                                           self.sandbox)
            student_dir = resolve_model(self.cfg.student.model)
            inputs = Inputs([], eval_tasks, student_dir, model_identity(student_dir))
        if self.pool is None:
            self.pool = LazyPool(student_dir, self.cfg.student)
        return inputs

    def windows(self, inputs: Inputs) -> Iterator[Inputs]:
        """The training pool `data.window` tasks at a time (0: all at once), each window's
        tests synthesised where asked and its seen tests checked in this run's sandbox. A pool
        that fits one window runs exactly as a whole; a larger one writes its views in parts
        (RunStore.set_window), joined by finish_windows, so memory holds one window's records."""
        from engine.tasks.docstring_tests import verify_seen_tests

        data, size = self.cfg.data, self.cfg.data.window
        self.run.discard_windows()       # parts a killed windowed pass left: rewritten below
        it = iter(self.pool_tasks)
        ahead = list(itertools.islice(it, size + 1)) if size else list(it)
        index, total = 0, 0
        while ahead or index == 0:
            window, ahead = ahead[:size] if size else ahead, ahead[size:] if size else []
            ahead += list(itertools.islice(it, size - len(ahead) + 1)) if size else []
            windowed = index > 0 or bool(ahead)
            if windowed and self.cfg.online_rounds and not self.cfg.skip_train:
                raise ConfigError(
                    f"online_rounds: online PersD keeps the whole pool's records, and this "
                    f"pool is larger than data.window={size} tasks: set data.window 0 (or "
                    "above the pool size) for an online run")
            if windowed:
                self.run.set_window(index)
                print(f"[distill] window {index}: tasks {total + 1}-{total + len(window)}",
                      file=sys.stderr, flush=True)
            with self.clock("0-setup"):
                if data.synthesize and any(not t.tests for t in window):
                    if windowed:
                        raise ConfigError(
                            f"data.synthesize: test synthesis runs on a pool of one window; "
                            f"this pool is larger than data.window={size}: synthesise its "
                            "tests first (python -m engine.synthesize) or set data.window 0")
                    window = self.synthesize(window)
                window = verify_seen_tests(window, self.sandbox)
            total += len(window)
            index += 1
            self.windows_done = index
            yield dataclasses.replace(inputs, train_tasks=window)
        if self.overlap is not None:      # complete now that the whole pool has been read
            self.summary.decontamination = self.overlap

    def finish_windows(self) -> None:
        """After the last window: the views made whole, the Hugging Face export and the
        personalisation summary made from them (streamed from disk: bounded memory)."""
        from engine.run.store import iter_view
        from engine.stages.datasets import export_hf

        if self.run.join_windows():
            self.summary.personalisation = personal.summarise(
                iter_view(self.run.path, "personalisation", personal.Personalisation))
        with self.clock("5-datasets"):
            export_hf(self.run.path / "hf", {
                name: self.run.file(name) for name in stages.DATASETS}, {
                "train_tasks": self.cfg.data.train_tasks, "student": self.cfg.student.model,
                "teacher": self.cfg.teacher.model})

    def synthesize(self, pool: list[Task]) -> list[Task]:
        """0: checked tests for the tasks that have none (engine/tasks/synthesize.py), before
        the student starts (the local teacher and the student share the machine); tasks whose
        tests are not kept are left out. The report goes to RUN/synthesis/."""
        from engine.tasks.synthesize import synthesize_into

        need = [t for t in pool if not t.tests]
        out = Path(self.run.path) / "synthesis"
        kept, self.summary.synthesis = synthesize_into(self.cfg, self.run, self.sandbox, need,
                                                       out, self.clock)
        with_tests = {t.task_id: t for t in kept}
        print(f"[distill] synthesised tests: kept {len(kept)} of {len(need)} tasks without "
              f"tests (report: {out})", file=sys.stderr, flush=True)
        return [t if t.tests else with_tests[t.task_id] for t in pool
                if t.tests or t.task_id in with_tests]

    def attempt(self, inputs: Inputs) -> Attempts:
        """1-2: the student's attempts at every training task, graded."""
        attempts = {a.attempt_id: a for a in self.sample_attempts(inputs)}
        with self.clock("2-grade"):
            grades = self.grade_attempts(inputs.tasks, attempts.values())
        return self.count_attempts(inputs, Attempts(attempts, grades))

    def grade_attempts(self, tasks: dict[str, Task], attempts: Iterable[Attempt],
                       part: bool = False) -> dict[str, Grade]:
        """2: attempts against their tasks' tests (view `grades`); `part`: one streamed group."""
        return stages.grade_stage(self.run, "grades", self.sandbox, [
            (a.attempt_id, tasks[a.task_id], a.code) for a in attempts], part=part)

    def sample_attempts(self, inputs: Inputs, on_records=None) -> list[Attempt]:
        """1: the student's samples for every training task, in task order; `on_records` sees
        each finished group as it commits (the streaming pass grades it there)."""
        from engine.student import Decoding, Sampling

        st = self.cfg.student
        with self.clock("1-attempt"):
            return stages.attempt_stage(
                self.run, "attempts", self.pool, stages.task_jobs(inputs.train_tasks),
                model_id=inputs.student_id, decoding=Decoding.of(st),
                sampling=Sampling.attempts(st), batch=ATTEMPT_BATCH, on_records=on_records)

    def count_attempts(self, inputs: Inputs, tried: Attempts) -> Attempts:
        """The window's attempts, added to the summary's counts."""
        self.summary.attempts = add_counts(self.summary.attempts, AttemptCounts(
            tasks=len(inputs.train_tasks), samples=len(tried.attempts),
            passed=len(tried.attempts) - len(tried.failed), failed=len(tried.failed)))
        return tried

    def evaluate(self, inputs: Inputs, name: str, adapter: Path | None = None):
        """7a/7b: pass@k on the held-out set (with multi-step rounds when configured)."""
        from engine.evaluate import evaluate

        with self.clock("7a-eval-before" if adapter is None else "7b-eval-after"):
            return evaluate(self.pool, self.sandbox, inputs.eval_tasks, self.cfg.eval,
                            self.cfg.student, self.run, name,
                            adapter=str(adapter) if adapter else None,
                            model_id=inputs.student_id)

    def release_student(self) -> None:
        if self.own_pool:
            self.pool.close()  # its memory and cores go to the teacher and the trainer

    def refine(self, inputs: Inputs, tried: Attempts) -> TeacherWork:
        """3: refinements of the failures, round by round, and the StanD answers."""
        from engine.teacher.endpoint import teacher_endpoint

        tc, run = self.cfg.teacher, self.run
        with teacher_endpoint(self.cfg, run, self.clock) as endpoint:
            teacher = endpoint.teacher(tc, Path(run.path) / "teacher-cache.jsonl")
            asyncio.run(teacher.check_reachable())
            refs, rounds = stages.refine_rounds(run, teacher, self.sandbox, tried.failed,
                                                inputs.tasks, tried.grades, tc, self.clock)
            stand_jobs = stages.stand_jobs(inputs.train_tasks) if tc.stand else []
            with self.clock("3-refine"):
                stand = stages.refine_stage(run, "stand-answers", teacher, stand_jobs, "stand")
        work = TeacherWork(teacher, endpoint.model, endpoint.identity, list(refs.values()),
                           list(stand.values()), rounds, stand_jobs)
        run.export("refinements", work.refinements)
        run.export("stand-answers", work.stand)
        return work

    def stream(self, inputs: Inputs) -> tuple[Attempts, object, TeacherWork]:
        """1-4 streamed (engine/pipeline/streaming.py): the same stage units chunk by chunk, the
        teacher's chunks concurrent with the student's next chunks and its evaluation."""
        from engine.pipeline.streaming import stream

        tried, before, work = stream(self, inputs)
        return self.count_attempts(inputs, tried), before, work

    def verify(self, inputs: Inputs, work: TeacherWork) -> dict[str, Grade]:
        """4: every refinement and StanD answer against its task's tests."""
        with self.clock("4-verify"):
            return stages.verify_stage(self.run, self.sandbox, work.refinements + work.stand,
                                       inputs.tasks)

    def build(self, inputs: Inputs, tried: Attempts, work: TeacherWork,
              verified: dict[str, Grade]) -> dict[str, list[Example]]:
        """5: the datasets (JSONL views, and Hugging Face datasets under hf/ with a card), and
        each example's personalisation."""
        with self.clock("5-datasets"):
            datasets = stages.build_datasets(
                inputs.tasks, tried.attempts, tried.grades, stages.one_per_attempt(
                    work.refinements + work.stand, verified, tried.attempts,
                    self.cfg.teacher.keep), verified)
            for name, examples in datasets.items():
                self.run.export(name, examples)
            rows = stages.personalisation(datasets, tried.attempts, tried.grades, inputs.tasks)
            self.run.export("personalisation", rows)
        self.summary.personalisation = personal.summarise(rows)   # a windowed pass: redone whole
        return datasets

    def train(self, inputs: Inputs) -> Path:
        """6: the LoRA adapter on the configured dataset (its view, read by the trainer)."""
        from engine.stages.train import train_adapter

        name = self.cfg.dataset
        if not (self.summary.datasets or {}).get(name):
            raise EmptyDataset(f"dataset {name!r} is empty: no verified examples to train on "
                               "(see refinements.jsonl and verified.jsonl)")
        with self.clock("6-train"):
            return train_adapter(self.cfg, self.run.file(name), inputs.student_dir,
                                 inputs.student_id, self.run.path / "train")

    def online(self, inputs: Inputs, tried: Attempts, work: TeacherWork,
               verified: dict[str, Grade], datasets: dict[str, list[Example]], adapter: Path,
               after) -> None:
        """Online rounds: the adapted student tries again, the teacher refines, it trains on."""
        from engine.pipeline.online import round_row, run_online
        from engine.tasks.overlap import load_pool

        cfg, examples = self.cfg, datasets[self.cfg.dataset]
        first = round_row(0, len(inputs.train_tasks), len(tried.attempts), len(tried.failed),
                          stages.solved_attempts(work.refinements, verified), len(examples),
                          len(examples), adapter, after)
        rows = [first] + run_online(
            cfg, self.run, self.pool, self.sandbox,
            load_pool(cfg.data.train_tasks, 0, cfg.data.decontaminate, cfg.data.columns)[0],
            tried.attempts,
            tried.grades, examples, adapter, inputs.eval_tasks, inputs.student_dir,
            inputs.student_id, self.clock, self.own_pool, work.refinements + work.stand,
            verified)
        self.summary.online = rows
        last = rows[-1]
        self.summary.adapter, self.summary.adapter_id = last.adapter, last.adapter_id
        self.summary.pass_after = last.pass_after

    # ------------------------------------------------------------------------------------ report
    def placement(self) -> dict:
        """The Ray node of each pool ("" where Ray was not started): proof of where they ran."""
        from engine.cluster import node_id

        driver = node_id()
        trained = self.run.path / "train" / "trained-on.txt"
        return {"driver": driver, "student": list(getattr(self.pool, "nodes", None) or []),
                "sandbox": getattr(self.sandbox, "node", driver),
                "trainer": trained.read_text().strip() if trained.exists() else None}

    def report_data(self, inputs: Inputs, tried: Attempts, work: TeacherWork,
                    verified: dict[str, Grade], datasets: dict[str, list[Example]],
                    before) -> None:
        from engine.teacher import Usage

        teacher = work.teacher

        def passed(rid: str) -> bool:
            return rid in verified and verified[rid].passed

        def tokens(recs: list[Refinement], jobs: list, stage: str, **extra) -> TeacherCounts:
            ids = {r.refinement_id for r in recs}
            pt, ct = sum(r.prompt_tokens for r in recs), sum(r.completion_tokens for r in recs)
            return TeacherCounts(
                calls=sum(j.job_id in ids for j in jobs), samples=len(recs),
                cached=sum(r.cached for r in recs), prompt_tokens=pt, completion_tokens=ct,
                cost_usd=round(teacher.cost(pt, ct), 6),
                extraction_failed=sum(r.code is None for r in recs),
                unchanged=sum(r.unchanged for r in recs),
                verified=sum(passed(r.refinement_id) for r in recs),
                this_run=asdict(teacher.usage.get(stage, Usage())), **extra)

        s = self.summary   # a window's counts are added to the earlier windows'
        s.teacher = add_counts(s.teacher, TeacherSummary(
            model=work.model, identity=work.identity,
            price_per_mtok=[teacher.price_in, teacher.price_out],
            refine=tokens(work.refinements, [j for js in work.rounds for j in js], "refine",
                          verified_by_round=[sum(passed(i) for j in js for i in j.ids)
                                             for js in work.rounds]),
            stand=tokens(work.stand, work.stand_jobs, "stand"),
            calls_sent_this_run=teacher.calls, spent_usd_this_run=round(teacher.spent_usd, 6)))
        s.datasets = add_counts(s.datasets, {k: len(v) for k, v in datasets.items()})
        s.student = StudentInfo(model=self.cfg.student.model, model_id=inputs.student_id)
        s.pass_before = before.pass_at
        if self.cfg.eval.rounds:
            s.pass_before_per_round = list(before.rounds)

    def report_after(self, adapter: Path, after) -> None:
        s = self.summary
        s.adapter, s.adapter_id, s.pass_after = str(adapter), after.adapter_id, after.pass_at
        if self.cfg.eval.rounds:
            s.pass_after_per_round = list(after.rounds)

    def write_summary(self, inputs: Inputs, before) -> RunSummary:
        """8: summary.json, written atomically."""
        s, cfg = self.summary, self.cfg
        s.eval = EvalInfo(tasks=len(inputs.eval_tasks), n=cfg.eval.n, set=cfg.data.eval_tasks,
                          without_samples=before.without_samples)
        s.seconds_per_stage = self.timings
        s.jobs = self.run.stats  # per stage: reused from the store / computed now
        s.write(self.run.path)
        self.write_report()
        return s

    def write_report(self) -> None:
        """report.md and its plots; a report that cannot be drawn never fails a finished run
        (`python -m engine.report RUN` rebuilds it)."""
        from engine.pipeline.report import build

        try:
            path = build(self.run.path)
        except Exception as e:  # noqa: BLE001 - the run's results are already safe on disk
            print(f"[report] could not build the report: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
        else:
            print(f"[report] {path}", file=sys.stderr, flush=True)
