"""The stages of one distillation pass, each a function on batches of typed records, each
resumable through the run store:

    attempt.py   1  the student samples code for every prompt (also pass@k sampling)
    grade.py     2  the sandbox grades attempts against the task's tests
    refine.py    3-4  the teacher rectifies the failures, in rounds; refinements are verified
    datasets.py  5  PersD, PersD-refine, PersD-combined, StanD, InpD, and personalisation

`engine/pipeline/staged.py` runs them in order (then `train.py`, stage 6); `engine/evaluate.py`
reuses attempt + grade for pass@k; `engine/pipeline/online.py` runs them again per online round.
"""
from engine.stages.attempt import (
                                   SampleJob,
                                   attempt_stage,
                                   refine_job,
                                   request_seed,
                                   sample,
                                   sample_requests,
                                   task_jobs,
)
from engine.stages.datasets import DATASETS, build_datasets, matched_stand, one_per_attempt, personalisation
from engine.stages.grade import grade, grade_stage, program, program_fingerprint, programs_stage
from engine.stages.refine import (
                                   TeacherJob,
                                   ask_teacher,
                                   first_round_jobs,
                                   next_round_jobs,
                                   refine_rounds,
                                   refine_stage,
                                   solved_attempts,
                                   stand_jobs,
                                   verify_stage,
)

__all__ = ["DATASETS", "SampleJob", "attempt_stage", "refine_job", "request_seed", "sample",
           "sample_requests", "task_jobs", "build_datasets", "matched_stand", "one_per_attempt",
           "personalisation", "grade", "grade_stage", "program", "program_fingerprint", "programs_stage",
           "TeacherJob", "ask_teacher", "first_round_jobs", "next_round_jobs", "refine_rounds",
           "refine_stage", "solved_attempts", "stand_jobs", "verify_stage"]
