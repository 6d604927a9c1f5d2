"""Where tasks come from: loaders per file format, the seen tests a prompt shows, and the
overlap check that keeps a training pool apart from the evaluation sets.

    loaders.py          HumanEval, MBPP and plain JSONL files (and the built-in set in data/)
                        into `Task` records; task specs (`builtin`, `humaneval`, `mbpp-test:PATH`,
                        `A+B`, ...)
    docstring_tests.py  seen tests from a HumanEval docstring's examples, checked against the
                        reference in the sandbox
    overlap.py          decontamination by shared word 13-grams
"""
from engine.tasks.loaders import (
                                  BUILTIN_PATH,
                                  TaskFileError,
                                  assert_to_test,
                                  check_to_tests,
                                  detect_format,
                                  humaneval_package_file,
                                  load_file,
                                  load_tasks,
                                  shown_in,
                                  split_tasks,
)

__all__ = ["BUILTIN_PATH", "TaskFileError", "assert_to_test", "check_to_tests", "detect_format",
           "humaneval_package_file", "load_file", "load_tasks", "shown_in", "split_tasks"]
