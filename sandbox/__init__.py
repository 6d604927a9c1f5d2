"""Grading untrusted programs: a pool of warm, bwrap-jailed workers (see pool.py).

    records.py  Program, TestCase, Grade, Status: the interface, the same file host and jail use
    config.py   SandboxConfig, the `sandbox` section of the run config
    pool.py     SandboxPool: grade / agrade batches of Programs, replace dead workers
    launch.py   the bwrap jail, one worker's pipes, which isolation layers are active (host side)
    cgroups.py  a memory- and pids-limited cgroup per worker (host side)
    worker.py   the loop inside the jail: a program in, its child run, the tests judged, a reply out
    zygote.py   forks each program's child from a process that never held a test, reaps it
    channel.py  the worker's pipes to one child: program and operations out, answers in, a clock
    parse.py    a test read: its statements, `assert L == R` split out, the program's names
    plan.py     a test cut into operations for the child and the worker's own code
    judge.py    the trusted judgement: setup and tests run in the worker, operations in the child
    remote.py   the program's objects and exceptions as the worker holds them
    harness.py  the child: confine itself, run the program, answer operations (never a test)
    confine.py  seccomp filter and Landlock ruleset, built once per worker, applied per program
    verdict.py  the judged tests + how the child ended -> Status and feedback
    values.py   strict encoding, decoding and comparison of values
    protocol.py frames and wire records between pool, worker and child

This file stays empty of imports: the jail gets its own copy of the package without pool.py.
"""
