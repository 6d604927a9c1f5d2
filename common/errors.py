"""The errors a user can act on, one hierarchy for every layer.

A `PersdError` is the user's to fix (a setting, a file, an endpoint, an empty dataset); the CLIs
print its message as one line naming the file, field or URL and exit with code 2, without a
traceback. Anything else is a bug or a broken machine and keeps its traceback. Each class also
derives from the builtin it replaces, so `except ValueError` around a config still works.
"""
from __future__ import annotations


class PersdError(Exception):
    """An error the user can act on; its message says where and what to do."""


class ConfigError(PersdError, ValueError):
    """A setting or config file that cannot be used (names the key or the file)."""


class TaskFileError(PersdError, ValueError):
    """A task file that cannot be used (names the file and line)."""


class ProvisionError(PersdError, RuntimeError):
    """A model that cannot be found or fetched."""


class TeacherUnreachable(PersdError, RuntimeError):
    """The teacher endpoint fails every request (names the URL)."""


class EmptyDataset(PersdError, RuntimeError):
    """Nothing verified to train on."""


class TrainerFailed(PersdError, RuntimeError):
    """The training process exited with an error (its command is in the message)."""


class SandboxUnavailable(PersdError, RuntimeError):
    """The sandbox cannot isolate programs as its config requires."""


class RunInUse(PersdError, RuntimeError):
    """Another live process holds this run directory."""


class MissingFile(PersdError, FileNotFoundError):
    """A file or directory the config names does not exist (names the path)."""
