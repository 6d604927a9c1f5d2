"""The student model as a service: vLLM engines in Ray actors, and the CPU environment they run in.

    pool.py         Sampling, Decoding, GenRequest and GenOutput records, the StudentEngine
                    actor, StudentPool (shards requests across actors) and LazyPool (starts
                    them on first use)
    cpu_env.py      thread binding and LD_PRELOADs for vLLM-CPU, chosen by measurement
    cpu_sampler.py  the sort-free top-p sampler (registered by engine/vllm_plugin.py)
"""
from engine.student.pool import (
                                 Decoding,
                                 GenOutput,
                                 GenRequest,
                                 LazyPool,
                                 Sampling,
                                 StudentEngine,
                                 StudentPool,
                                 init_ray,
)

__all__ = ["Decoding", "GenOutput", "GenRequest", "LazyPool", "Sampling", "StudentEngine",
           "StudentPool", "init_ray"]
