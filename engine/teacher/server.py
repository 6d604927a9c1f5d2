"""Start and stop vLLM's OpenAI-compatible server for a local teacher on 127.0.0.1.

The engine owns this process: it picks a free port, waits for `/v1/models` to answer, and stops
the server (SIGTERM, then SIGKILL) when the refine stage is over, also when the run fails.

    with LocalServer(model_dir, "teacher", log_path=Path("server.log")) as url: ...
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.hardware import has_gpu, resolve_dtype
from engine.run.runlog import Progress
from engine.student.cpu_env import vllm_cpu_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    def __init__(self, model: str, served_name: str, log_path: Path, kv_cache_gb: int = 4,
                 max_model_len: int = 4096, dtype: str = "auto", startup_s: float = 900.0,
                 extra_args: tuple[str, ...] = (), threads: str = "all",
                 preload: str = "tcmalloc,iomp", eager: bool = True,
                 max_num_seqs: int = 256, chunked_prefill: bool = False):
        self.model, self.served_name, self.log_path = model, served_name, log_path
        self.kv_cache_gb, self.max_model_len = kv_cache_gb, max_model_len
        self.dtype = resolve_dtype(dtype, gpu=has_gpu())   # auto: common/hardware.py
        self.startup_s, self.extra_args = startup_s, extra_args
        self.threads, self.preload, self.eager = threads, preload, eager
        self.max_num_seqs = max_num_seqs
        self.chunked_prefill = chunked_prefill
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        self.port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--served-model-name", self.served_name, "--host", "127.0.0.1",
               "--port", str(self.port), "--dtype", self.dtype,
               "--max-model-len", str(self.max_model_len),
               "--max-num-seqs", str(self.max_num_seqs),
               *(("--enforce-eager",) if self.eager else ()),
               # A prefill chunked across steps makes vLLM rewind the request's generator, which
               # a seeded request has on CPU and cannot rewind: the engine dies ("CPU Generator
               # does not use offset"). Whole prefills need a batch budget >= the context.
               *(() if self.chunked_prefill else (
                   "--no-enable-chunked-prefill",
                   "--max-num-batched-tokens", str(max(self.max_model_len, 8192)))),
               *self.extra_args]
        env = {**os.environ, **vllm_cpu_env(self.threads, self.kv_cache_gb, self.preload),
               "VLLM_HOST_IP": "127.0.0.1"}
        print(f"[teacher] starting vLLM OpenAI server for {self.served_name} on {self.url} "
              f"(log: {self.log_path})", file=sys.stderr, flush=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # stop the whole process group
        deadline = time.monotonic() + self.startup_s
        waiting = Progress("teacher-start", total=1, unit="servers")   # a minute or more on CPU
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"teacher server exited with code {self.proc.returncode} "
                                       f"while starting; see {self.log_path}")
                try:
                    with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                        if r.status == 200:
                            waiting.update()
                            return self.url
                except OSError:
                    pass
                time.sleep(1.0)
        finally:
            waiting.finish()
        self.stop()
        raise TimeoutError(f"teacher server did not come up in {self.startup_s:.0f} s; "
                           f"see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
