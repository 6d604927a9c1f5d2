"""The teacher endpoint of a run: the configured OpenAI-compatible URL, or a local vLLM server
started for the run's teacher model and stopped when the block ends."""
from __future__ import annotations

import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.models import model_identity
from engine.run.store import RunStore


@dataclass(frozen=True)
class Endpoint:
    """Where the teacher answers: URL, model name, the identity its cache keys use (a local
    server: its weights' content hash, not its random port), and whether the engine started it."""

    url: str
    model: str
    identity: str
    local: bool

    def teacher(self, tc, cache_path: Path):
        """A client for this endpoint (a local server gets tc.server_timeout_s)."""
        from engine.teacher.client import Teacher

        return Teacher(tc, self.url, self.model, cache_path, identity=self.identity,
                       timeout_s=tc.server_timeout_s if self.local else tc.timeout_s)


@contextmanager
def teacher_endpoint(cfg: RunConfig, run: RunStore, clock=None):
    """The configured endpoint, or a local vLLM server for the teacher model, started here and
    stopped when the block ends. `clock(name)` times its start-up (a stage time of its own)."""
    if cfg.teacher.base_url:
        yield Endpoint(cfg.teacher.base_url, cfg.teacher.model, cfg.teacher.base_url, False)
        return
    from engine.models import resolve_model
    from engine.teacher.server import LocalServer

    model_dir = resolve_model(cfg.teacher.model)
    server = LocalServer(model_dir, cfg.teacher.model, run.path / "teacher-server.log",
                         kv_cache_gb=cfg.teacher.server_kv_cache_gb,
                         threads=cfg.teacher.server_threads, preload=cfg.teacher.server_preload,
                         eager=cfg.teacher.server_eager, dtype=cfg.teacher.server_dtype,
                         max_num_seqs=cfg.teacher.server_max_seqs,
                         chunked_prefill=cfg.teacher.server_chunked_prefill,
                         startup_s=cfg.teacher.server_startup_s)
    try:
        with clock("3-teacher-start") if clock else contextlib.nullcontext():
            url = server.start()
        # the identity names the weights, not the random port, so a re-run hits the cache
        yield Endpoint(url, cfg.teacher.model, f"local:{model_identity(model_dir)}", True)
    finally:
        server.stop()
