"""The student service: vLLM engines hosted in Ray actors, with requests sharded and batched.

Each actor owns one `vllm.LLM`; the pool splits a batch of `GenRequest`s across actors, and each
actor hands its whole share to vLLM at once (continuous batching does the rest). Adapters are
chosen per request, so several fine-tunes are evaluated against one loaded base model.

    pool = StudentPool(model_dir, StudentConfig())
    outs = pool.generate([GenRequest("t1#0", messages=[{"role": "user", "content": "hi"}])])
    pool.close()
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator

from engine.config import StudentConfig
from engine.run.store import content_hash


@dataclass(frozen=True)
class GenRequest:
    request_id: str
    messages: tuple[dict[str, str], ...] = ()  # chat format; rendered with the model's template
    prompt: str = ""                           # completion format (used when messages is empty)
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str | None = None                 # LoRA adapter directory, None = base model


@dataclass(frozen=True)
class Sampling:
    """How to sample, one record for every caller (training attempts, evaluation rounds, online
    rounds) instead of the same seven arguments spelled out at each."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0                  # base seed: each request gets its own from it and its id
    prompt_format: str = "chat"    # chat (the model's chat template) or completion
    adapter: str | None = None     # LoRA adapter directory, None = base model

    @classmethod
    def attempts(cls, st: StudentConfig, seed_offset: int = 0, adapter: str | None = None
                 ) -> "Sampling":
        """The student's attempts at training tasks (online round r: seed_offset r)."""
        return cls(st.samples, st.temperature, st.top_p, st.max_tokens, st.seed + seed_offset,
                   st.prompt_format, adapter)


@dataclass(frozen=True)
class Decoding:
    """The engine settings a sample depends on besides its request (in every sample's
    fingerprint; the field order is the sorted order the earlier dict had, so fingerprints of
    existing runs are unchanged)."""

    dtype: str
    max_model_len: int
    prompt_format: str

    @classmethod
    def of(cls, st: StudentConfig) -> "Decoding":
        return cls(st.dtype, st.max_model_len, st.prompt_format)


@dataclass(frozen=True)
class GenOutput:
    request_id: str
    texts: tuple[str, ...]          # n completions
    completion_tokens: int          # summed over the n completions
    prompt_tokens: int
    model_id: str = ""              # content hash of the weights the engine loaded
    adapter_id: str | None = None   # content hash of the adapter it applied (None: none)
    token_ids: tuple[tuple[int, ...], ...] = ()  # the n completions as token ids


def _actor_env(cfg: StudentConfig) -> dict[str, str]:
    from engine.student.cpu_env import vllm_cpu_env

    return {**vllm_cpu_env(cfg.cpu_threads, cfg.kv_cache_gb, cfg.preload),
            # Ray sets 1 for a 1-CPU actor; vLLM needs the cores
            "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0))),
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
            # inline: no engine-core process (each process start re-imports vLLM, ~10 s here)
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if cfg.engine_process == "inline" else "1"}


class StudentEngine:
    """One vLLM engine. Runs inside a Ray actor (see `StudentPool`), or in-process for tests."""

    def __init__(self, model: str, cfg: StudentConfig):
        os.environ.update(_actor_env(cfg))
        from vllm import LLM

        self.cfg = cfg
        # Chunked prefill discards the token sampled for a partly prefilled prompt and rewinds
        # its seeded generator, which CPU generators cannot do ("CPU Generator does not use
        # offset"): with per-request seeds, prompts must be prefilled whole on CPU.
        self.llm = LLM(model=model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                       enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=4,
                       seed=cfg.seed, trust_remote_code=False,
                       enable_chunked_prefill=cfg.chunked_prefill,
                       tensor_parallel_size=cfg.tensor_parallel_size,
                       enforce_eager=cfg.enforce_eager,
                       max_num_batched_tokens=max(cfg.max_model_len, 8192),
                       max_num_seqs=cfg.max_num_seqs,
                       # inline: the worker too runs in this process, not in a spawned one
                       distributed_executor_backend="uni" if cfg.engine_process == "inline"
                       else None)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = content_hash(model) if os.path.isdir(model) else f"hub:{model}"
        self._lora_ids: dict[str, int] = {}   # adapter content hash -> vLLM LoRA id

    def _lora(self, path: str | None):
        """The LoRA request for an adapter directory, keyed by its content: an adapter rewritten
        at the same path gets a new id, so vLLM never serves its stale cached copy."""
        if path is None:
            return None, None
        from vllm.lora.request import LoRARequest

        digest = content_hash(path)
        lid = self._lora_ids.setdefault(digest, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter-{lid}", lid, path), digest

    def render(self, req: GenRequest) -> str:
        if not req.messages:
            return req.prompt
        return self.tokenizer.apply_chat_template(list(req.messages), tokenize=False,
                                                  add_generation_prompt=True)

    def generate_stream(self, requests: list[GenRequest], flush_s: float = 0.5
                        ) -> Iterator[list[GenOutput]]:
        """The whole batch goes to vLLM at once (continuous batching keeps it full); finished
        requests come back in groups, at most every `flush_s` seconds, as vLLM finishes them,
        so the caller commits, grades and shows progress per finished request instead of
        waiting for the slowest sample of the batch."""
        from vllm import SamplingParams

        if not requests:
            return
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():   # an abandoned stream is aborted in its finally
            raise RuntimeError("student engine: requests of an earlier batch are unfinished")
        params = [SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p,
                                 max_tokens=r.max_tokens, seed=r.seed, stop=list(r.stop) or None)
                  for r in requests]
        known = {p: self._lora(p) for p in {r.adapter for r in requests}}
        ids = self.llm.enqueue([self.render(r) for r in requests], params,
                               lora_request=[known[r.adapter][0] for r in requests],
                               use_tqdm=False)
        # enqueue returns vLLM's internal ids ("<n>-<random>"); outputs carry the external "<n>"
        internal = {iid.split("-", 1)[0]: iid for iid in ids}
        waiting = dict(zip(internal, requests))
        ready: list[GenOutput] = []
        last = time.monotonic()
        try:
            while waiting:
                for o in engine.step():
                    if o.finished:
                        r = waiting.pop(o.request_id)
                        ready.append(GenOutput(
                            r.request_id, tuple(c.text for c in o.outputs),
                            sum(len(c.token_ids) for c in o.outputs), len(o.prompt_token_ids),
                            self.model_id, known[r.adapter][1],
                            tuple(tuple(c.token_ids) for c in o.outputs)))
                if ready and (not waiting or time.monotonic() - last >= flush_s):
                    yield ready
                    ready, last = [], time.monotonic()
        finally:
            if waiting:   # the consumer stopped early: free the engine for the next batch
                engine.abort_request([internal[k] for k in waiting], internal=True)

    def ready(self) -> bool:
        return True

    def node(self) -> str:
        """The Ray node this engine runs on."""
        from engine.cluster import node_id

        return node_id()


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster a Ray job runs in (RAY_ADDRESS), else start a small local one."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        # address="local": never attach to a cluster some earlier `ray start` left recorded in
        # /tmp/ray (it may be gone, or someone else's); a run without RAY_ADDRESS owns its Ray.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


class StudentPool:
    """N `StudentEngine` actors; `generate` shards a batch across them and keeps input order."""

    def __init__(self, model: str, cfg: StudentConfig):
        import ray

        init_ray()
        actor_cls = ray.remote(StudentEngine)
        # With tensor parallelism vLLM starts its own workers for the extra GPUs; the actor
        # reserves them all so two engines never land on the same devices.
        from engine.cluster import check_offered, parse_resources

        gpus = cfg.num_gpus * cfg.tensor_parallel_size
        resources = parse_resources(cfg.resources, "student.resources")
        check_offered(resources, "student.resources")
        self.actors = [actor_cls.options(num_cpus=1, num_gpus=gpus, resources=resources,
                                         runtime_env={"env_vars": _actor_env(cfg)}).remote(model, cfg)
                       for _ in range(cfg.num_actors)]
        # the node each actor landed on; load errors surface here, not later
        self.nodes = ray.get([a.node.remote() for a in self.actors])

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        by_id = {o.request_id: o for group in self.generate_stream(requests) for o in group}
        return [by_id[r.request_id] for r in requests]

    def generate_stream(self, requests: list[GenRequest], flush_s: float = 0.5
                        ) -> Iterator[list[GenOutput]]:
        """Groups of finished outputs, from whichever actor has one ready first."""
        import ray

        # Round-robin shards by position: long and short prompts spread evenly.
        shards = [requests[i::len(self.actors)] for i in range(len(self.actors))]
        pending = [a.generate_stream.options(num_returns="streaming").remote(s, flush_s)
                   for a, s in zip(self.actors, shards) if s]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            gen = ready[0]
            try:
                ref = next(gen)
            except StopIteration:
                continue
            pending.append(gen)
            yield ray.get(ref)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> "StudentPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LazyPool:
    """A `StudentPool` started on the first `generate`: a resumed run whose sampling is all
    done loads no model (a minute of start-up on a CPU, for nothing)."""

    def __init__(self, model: str, cfg: StudentConfig):
        self.model, self.cfg = model, cfg
        self.pool: StudentPool | None = None
        self.nodes: list[str] = []   # where the last started pool's actors ran

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        return self.started().generate(requests) if requests else []

    def generate_stream(self, requests: list[GenRequest]) -> Iterator[list[GenOutput]]:
        return self.started().generate_stream(requests) if requests else iter(())

    def started(self) -> StudentPool:
        if self.pool is None:
            from engine.run.runlog import Progress

            # a minute on a CPU (vLLM's imports, weights, KV cache): say so, with the time
            starting = Progress("student-start", total=1, unit="engines")
            try:
                self.pool = StudentPool(self.model, self.cfg)
                starting.update()
            finally:
                starting.finish()
            self.nodes = list(self.pool.nodes)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "LazyPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
