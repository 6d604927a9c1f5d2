"""Stage 5, datasets: PersD, PersD-refine, PersD-combined, StanD (and its matched-budget cut) and
InpD from the verified refinements, and how personal each example's target is."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

from engine import prompts
from engine.records import Attempt, Example, Grade, Refinement, Task
from engine.stages import personal

# every dataset a pass builds, in the order build_datasets returns them
DATASETS = ("persd", "persd-refine", "persd-combined", "stand", "stand-matched", "inpd")


def one_per_attempt(refinements: Sequence[Refinement], verified: dict[str, Grade],
                    attempts: dict[str, Attempt], keep: str = "closest") -> list[Refinement]:
    """What `build_datasets` should see. Of the passing refinements of one attempt (several
    samples or rounds) `closest` keeps the one most similar to the student's own attempt (the
    most personal target; ties: the first), so no attempt is over-weighted; `all` keeps all."""
    best: dict[str, tuple[float, int]] = {}
    for i, r in enumerate(refinements):
        v = verified.get(r.refinement_id)
        if r.attempt_id is not None and v is not None and v.passed and r.code is not None:
            sim = personal.similarity(attempts[r.attempt_id].code, r.code).text
            if r.attempt_id not in best or sim > best[r.attempt_id][0]:
                best[r.attempt_id] = (sim, i)
    chosen = {i for _, i in best.values()}
    out = []
    for i, r in enumerate(refinements):
        v = verified.get(r.refinement_id)
        passing = r.attempt_id is not None and v is not None and v.passed
        if passing and keep == "closest" and i not in chosen:
            continue
        out.append(r)
    return out


def matched_stand(stand: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """StanD cut to `size` examples (the paper's matched-budget baseline: as many examples as
    PersD), chosen by a stable hash of the task id so the choice is the same in every run."""
    order = sorted(stand, key=lambda e: zlib.crc32(f"{seed}:{e.task_id}".encode()))
    return sorted(order[:size], key=lambda e: e.example_id)



def _answer(code: str) -> tuple[dict[str, str], ...]:
    return ({"role": "assistant", "content": f"```python\n{code.rstrip()}\n```"},)


def build_datasets(tasks: dict[str, Task], attempts: dict[str, Attempt], grades: dict[str, Grade],
                   refinements: Sequence[Refinement], verified: dict[str, Grade]
                   ) -> dict[str, list[Example]]:
    """PersD, PersD-refine, PersD-combined, StanD and InpD, in TRL's prompt-completion format.

    Only refinements whose verification passed are used; one example per (task, source) so a task
    with several passing refinements is not over-weighted.
    """
    persd, refine_ex, stand, inpd = [], [], [], []
    seen_persd: set[str] = set()
    for r in refinements:
        v = verified.get(r.refinement_id)
        if r.code is None or v is None or not v.passed:
            continue
        task = tasks[r.task_id]
        user = ({"role": "user", "content": prompts.task_message(task)},)
        if r.attempt_id is None:
            stand.append(Example(f"{r.refinement_id}", task.task_id, "stand", user, _answer(r.code)))
            continue
        att = attempts[r.attempt_id]
        if task.task_id not in seen_persd:
            seen_persd.add(task.task_id)
            persd.append(Example(f"{r.refinement_id}:persd", task.task_id, "persd", user,
                                 _answer(r.code)))
        feedback = grades[att.attempt_id].feedback
        refine_user = ({"role": "user",
                        "content": prompts.refine_message(task, att.code or att.completion, feedback)},)
        refine_ex.append(Example(f"{r.refinement_id}:refine", task.task_id, "persd-refine",
                                 refine_user, _answer(r.code)))
    failed_tasks = {a.task_id for a in attempts.values() if grades[a.attempt_id].failed}
    for tid in sorted(failed_tasks):
        task = tasks[tid]
        if task.reference:
            inpd.append(Example(f"{tid}>ref:inpd", tid, "inpd",
                                ({"role": "user", "content": prompts.task_message(task)},),
                                _answer(task.reference)))
    return {"persd": persd, "persd-refine": refine_ex, "persd-combined": persd + refine_ex,
            "stand": stand, "stand-matched": matched_stand(stand, len(persd)), "inpd": inpd}


def personalisation(datasets: dict[str, list[Example]], attempts: dict[str, Attempt],
                    grades: dict[str, Grade], tasks: dict[str, Task]
                    ) -> list[personal.Personalisation]:
    """Each example's target against the student's attempt it stands for: a refinement's own
    attempt; for task-level examples (StanD, InpD) the task's first failed attempt."""
    first_failed: dict[str, Attempt] = {}
    for a in attempts.values():
        if grades[a.attempt_id].failed:
            first_failed.setdefault(a.task_id, a)
    stand = {e.task_id: _code(e) for e in datasets["stand"]}
    rows = []
    for kind in ("persd", "persd-refine", "stand", "inpd"):
        for e in datasets[kind]:
            if kind.startswith("persd"):
                att = attempts.get(e.example_id.split(">r", 1)[0])
            else:
                att = first_failed.get(e.task_id)
            if att is None:
                continue
            ref = tasks[e.task_id].reference
            rows.append(personal.Personalisation(
                e.example_id, e.task_id, kind, personal.similarity(att.code, _code(e)),
                personal.similarity(att.code, stand[e.task_id]) if e.task_id in stand else None,
                personal.similarity(att.code, ref) if ref else None))
    return rows


def _code(e: Example) -> str:
    """The code of an example's completion (`_answer` wraps it in one fence)."""
    text = e.completion[0]["content"]
    return text.removeprefix("```python\n").removesuffix("\n```")


# Licences of the task sources a pool can draw from (for the dataset card).
SOURCE_LICENCES = {"builtin": "Apache-2.0 (this project's built-in set)",
                   "mbpp": "CC-BY-4.0 (MBPP, Austin et al. 2021)",
                   "humaneval": "MIT (HumanEval, Chen et al. 2021)"}


def export_hf(out: Path, views: dict[str, Path], about: dict) -> None:
    """Each dataset view (`<name>.jsonl` of the run) as a Hugging Face `datasets` directory
    (`out/<name>/`, `load_from_disk`) and a Parquet file (`out/<name>.parquet`), with one
    dataset card (`out/README.md`). Read from the file in batches, never whole, so a pool of
    any size exports in bounded memory."""
    import hashlib
    import json
    import shutil

    import datasets
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Features, Value
    from datasets.arrow_writer import ArrowWriter

    from engine.run.store import view_lines

    msg = [{"role": Value("string"), "content": Value("string")}]
    features = Features({"example_id": Value("string"), "task_id": Value("string"),
                         "kind": Value("string"), "prompt": msg, "completion": msg})
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, path in views.items():
        d = out / name
        shutil.rmtree(d, ignore_errors=True)   # an earlier export of this directory
        (out / f"{name}.parquet").unlink(missing_ok=True)
        # the `save_to_disk` layout written directly: the Arrow stream in batches, then the two
        # small JSON files load_from_disk reads; the Parquet copy streamed from the same file.
        # Never a whole table in memory, and no memory-mapped read of the data (its pages
        # count in the process's RSS).
        d.mkdir(parents=True)
        arrow = d / "data-00000-of-00001.arrow"
        sizes[name] = 0
        with ArrowWriter(features=features, path=str(arrow), writer_batch_size=200) as writer:
            for line in view_lines(path):
                writer.write(orjson.loads(line))
                sizes[name] += 1
            writer.finalize()
        if not sizes[name]:
            shutil.rmtree(d)
            continue
        datasets.DatasetInfo(features=features).write_to_directory(str(d))
        (d / "state.json").write_text(json.dumps({
            "_data_files": [{"filename": arrow.name}],
            "_fingerprint": hashlib.sha256(f"{path}:{sizes[name]}:{arrow.stat().st_size}"
                                           .encode()).hexdigest()[:16],
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
            "_output_all_columns": False, "_split": None}, indent=2))
        with open(arrow, "rb") as f, pa.ipc.open_stream(f) as batches:
            with pq.ParquetWriter(str(out / f"{name}.parquet"), batches.schema) as pw:
                for batch in batches:
                    pw.write_batch(batch)
    pool = about.get("train_tasks", "")
    licences = sorted({v for k, v in SOURCE_LICENCES.items() if k in pool.lower()}) or [
        "the licence of the task file the pool came from"]
    rows = "\n".join(f"| {n} | {v} |" for n, v in sizes.items())
    (out / "README.md").write_text(f"""---
license: other
task_categories: [text-generation]
tags: [code, distillation, personalised-distillation]
---

# Personalised distillation data

Made by persd from the training pool `{pool}`: the student
**{about.get("student", "")}** attempted every task; its failed attempts were refined by the
teacher **{about.get("teacher", "")}** from the student's own code and the execution error, and
only refinements that passed the task's tests were kept (Chen et al., EMNLP 2023).

| dataset | examples |
|---|---:|
{rows}

Datasets: `persd` (task -> refined code, one per task), `persd-refine` (task + the student's
wrong code + its error -> refined code), `persd-combined` (both), `stand` (the teacher's own
verified answers for every task), `stand-matched` (StanD cut to PersD's size), `inpd` (the
reference solution for each failed task).

Fields (TRL's conversational prompt-completion format; the loss is on the completion):

| field | meaning |
|---|---|
| `example_id` | unique id: `<attempt>><round>.<sample>:<kind>` for refinements |
| `task_id` | the task it teaches |
| `kind` | persd, persd-refine, stand or inpd |
| `prompt` | the chat messages shown to the student (`role`, `content`) |
| `completion` | the assistant turn that carries the loss |

Load with `datasets.load_from_disk("<dir>")` or `datasets.Dataset.from_parquet("<name>.parquet")`;
`python -m train.lora --data <dir>` trains on it. To publish:
`datasets.load_from_disk("<dir>").push_to_hub("<user>/<name>")` (needs hub access and a token).

Licence of the task sources: {"; ".join(licences)}. Generated code follows the teacher's licence
terms.
""")
