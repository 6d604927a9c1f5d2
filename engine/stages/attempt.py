"""Stage 1, attempt: the student samples code for a batch of prompts, through the run store
(a sample is reused while its request, model, adapter and decoding settings are unchanged)."""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

from engine import prompts
from engine.records import Attempt, Task
from engine.run.store import RunStore, content_hash, fingerprint
from engine.student import Decoding, GenRequest, Sampling, StudentPool


@dataclass(frozen=True)
class SampleJob:
    """One prompt to sample n completions for; its attempts get ids f"{job_id}#{j}"."""

    job_id: str
    task: Task
    messages: tuple[dict[str, str], ...] = ()  # empty: the plain task message (or code prompt)
    prompt: str = ""                           # completion format: text to continue


def task_jobs(tasks: Sequence[Task]) -> list[SampleJob]:
    return [SampleJob(t.task_id, t) for t in tasks]


def refine_job(job_id: str, task: Task, code: str, feedback: str) -> SampleJob:
    """A PersD-refine prompt: the model's own code and execution feedback (seen tests only)."""
    return SampleJob(job_id, task,
                     ({"role": "user", "content": prompts.refine_message(task, code, feedback)},),
                     f"# This attempt fails: {feedback.strip()}\n{code}\n# Fixed version:\n"
                     f"{task.prompt}")


def request_seed(seed: int, job_id: str) -> int:
    """A per-request seed from the stable id, so any chunking or resume samples the same."""
    return (seed + zlib.crc32(job_id.encode())) % (2**31 - 1)


def sample_requests(jobs: Sequence[SampleJob], s: Sampling) -> list[GenRequest]:
    """The request each job sends: what its attempts' fingerprints are computed from."""
    reqs = []
    for job in jobs:
        common = dict(n=s.n, temperature=s.temperature,
                      top_p=s.top_p if s.temperature > 0 else 1.0, max_tokens=s.max_tokens,
                      seed=request_seed(s.seed, job.job_id), adapter=s.adapter)
        if s.prompt_format == "chat":
            msgs = job.messages or ({"role": "user", "content": prompts.task_message(job.task)},)
            reqs.append(GenRequest(job.job_id, messages=tuple(msgs), **common))
        else:
            reqs.append(GenRequest(job.job_id, prompt=job.prompt or job.task.prompt, **common))
    return reqs


def sample(pool: StudentPool, jobs: Sequence[SampleJob], sampling: Sampling
           ) -> Iterator[list[Attempt]]:
    """n samples per job, the whole batch submitted through the pool at once; yields the
    attempts of jobs as the engines finish them. Each attempt carries the model and adapter
    content hashes that the sampling engine itself reports."""
    by_id = {job.job_id: job for job in jobs}
    for outs in pool.generate_stream(sample_requests(jobs, sampling)):
        attempts = []
        for out in outs:
            job = by_id[out.request_id]
            t = job.task
            for j, text in enumerate(out.texts):
                if sampling.prompt_format == "chat":
                    code = prompts.extract_code(text, t.entry_point, t.prompt) or ""
                else:
                    code = t.prompt + prompts.truncate_completion(text)
                attempts.append(Attempt(f"{job.job_id}#{j}", t.task_id, text, code,
                                        sampling.adapter, out.model_id, out.adapter_id))
        yield attempts


def attempt_stage(store: RunStore, name: str, pool, jobs: Sequence[SampleJob], *,
                  model_id: str, decoding: Decoding, sampling: Sampling, batch: int = 0,
                  on_records=None) -> list[Attempt]:
    """Sample every job through the store: a job is reused while its request, the model's and
    the adapter's content hashes and the decoding settings (`decoding`: dtype, context length,
    prompt format) are unchanged. `batch` 0 submits every job at once; each job commits as soon
    as the engine finishes it. A sample whose engine reports another model or adapter than asked
    for is an error. `on_records` gets reused attempts at once, then each finished group."""
    adapter_id = content_hash(sampling.adapter) if sampling.adapter else None
    reqs = {q.request_id: dataclasses.replace(q, adapter=None)
            for q in sample_requests(jobs, sampling)}

    def checked(chunk: list[SampleJob]) -> Iterator[list[Attempt]]:
        for got in sample(pool, chunk, sampling):
            for a in got:  # before the commit: the store never holds a sample under a false name
                if (model_id and a.model_id != model_id) or a.adapter_id != adapter_id:
                    raise RuntimeError(f"{name}: sample {a.attempt_id} came from model "
                                       f"{a.model_id} with adapter {a.adapter_id}, not the model "
                                       f"{model_id} with adapter {adapter_id} that was asked for")
            yield got

    return store.stage(name, Attempt, jobs, key=lambda j: j.job_id,
                       fp=lambda j: fingerprint("attempt", model_id, adapter_id, decoding,
                                                reqs[j.job_id]),
                       rkey=lambda a: a.attempt_id.rsplit("#", 1)[0], compute=checked,
                       batch=batch or max(len(jobs), 1), on_records=on_records)
