"""Grading untrusted programs: a pool of warm, bwrap-jailed workers (see pool.py).

    config.py   SandboxConfig, the `sandbox` section of the run config
    pool.py     SandboxPool: grade / agrade batches of Programs, replace dead workers
    launch.py   the bwrap jail and one worker's pipes (host side)
    worker.py   the loop inside the jail: fork a child per program, time it, clean up
    harness.py  the child: confine itself, run setup, program and tests, report each test
    verdict.py  the trusted decision: child's reports + how it ended -> Status and feedback
    values.py   strict encoding and comparison of test outputs
    protocol.py frames and wire records between the three

This file stays empty of imports: the jail gets its own copy of the package without pool.py.
"""
