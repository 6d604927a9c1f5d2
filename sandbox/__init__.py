"""Grading untrusted programs: a pool of warm, bwrap-jailed workers (see pool.py).

    config.py   SandboxConfig, the `sandbox` section of the run config
    pool.py     SandboxPool: grade / agrade batches of Programs, replace dead workers
    launch.py   the bwrap jail, one worker's pipes, which isolation layers are active (host side)
    cgroups.py  a memory- and pids-limited cgroup per worker (host side)
    worker.py   the loop inside the jail: fork a child per program, time it, clean up
    confine.py  seccomp filter and Landlock ruleset, built once per worker, applied per program
    harness.py  the child: confine itself, run setup, program and tests, report each test
    verdict.py  the trusted decision: child's reports + how it ended -> Status and feedback
    values.py   strict encoding and comparison of test outputs
    protocol.py frames and wire records between the three

This file stays empty of imports: the jail gets its own copy of the package without pool.py.
"""
