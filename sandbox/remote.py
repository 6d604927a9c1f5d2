"""The program's objects and exceptions as the worker holds them: `Remote` references and
`Raised` exceptions, and the test namespace that looks program names up on demand.

A `Remote` can be called, have attributes read or set, or be passed back to the program (each
is one operation, judge.py). Any other use (==, bool, len, iterate, arithmetic) is a TypeError:
its behaviour is the program's, and the worker never asks the program to judge itself, so an
object whose `__eq__` always says yes compares equal to nothing.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import builtins
from typing import Any, Protocol

from sandbox.parse import BUILTIN_NAMES
from sandbox.values import type_name

CALL = "lambda __f, __a, __k: __f(*__a, **__k)"


class Operator(Protocol):
    def operate(self, source: str, args: list) -> Any: ...


class Opaque(TypeError):
    """A program object used where only a value can be judged."""


class Raised(Exception):
    """An exception the program raised, rebuilt here (a builtin exception type is kept)."""

    def __init__(self, etype: str, msg: str) -> None:
        Exception.__init__(self, msg)
        self.etype, self.msg = etype, msg

    def __str__(self) -> str:
        return self.msg


class Remote:
    """A program object the child keeps; see the module docstring for what it allows."""

    __slots__ = ("_judge", "_ref", "_type")

    def __init__(self, judge: Operator, ref: list | None, kind: str) -> None:
        object.__setattr__(self, "_judge", judge)
        object.__setattr__(self, "_ref", ref)    # ["ref", id] / ["name", n]; None: unusable
        object.__setattr__(self, "_type", kind)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._judge.operate(CALL, [self, list(args), dict(kwargs)])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or not name.isidentifier():
            raise AttributeError(name)   # Python's own probes (copy, pickle) stay here
        return self._judge.operate(f"lambda __o: __o.{name}", [self])

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.isidentifier():
            raise AttributeError(name)
        self._judge.operate(f"lambda __o, __v: __o.__setattr__({name!r}, __v)", [self, value])

    def __bool__(self) -> bool:
        raise Opaque(f"the truth of a {self._type} object is the program's to say")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise Opaque(f"a {self._type} object lives in the program")

    def __repr__(self) -> str:
        return f"<{self._type} object>"


class Namespace(dict):
    """The tests' globals: setup names, builtins, and program names on demand."""

    def __init__(self, judge: Operator) -> None:
        super().__init__(__builtins__=builtins, __name__="__test__")
        self._judge = judge

    def __missing__(self, name: str) -> Any:
        if name in BUILTIN_NAMES:
            raise KeyError(name)   # let the builtins answer
        return Remote(self._judge, ["name", name], name)


class Unsendable(Opaque):
    """A value only the worker has (a setup function, a pytest.approx): not for the program."""


def sendable(value: Any) -> list:
    """`encode`'s hook for arguments: a Remote goes back as its reference."""
    if isinstance(value, Remote) and value._ref is not None:
        return value._ref
    raise Unsendable(f"a {type_name(value)} cannot be sent to the program")


def label(value: Any) -> list:
    """`encode`'s hook for values the worker compares: no value encoding, never equal."""
    return ["opaque", value._type if isinstance(value, Remote) else type_name(value)]


# Exceptions a test may catch by type (`except ValueError:`). Not StopIteration and the like: a
# program that raised one inside the worker's `all(map(f, xs))` would end that loop early.
_KEPT_TYPES = ("ValueError", "TypeError", "KeyError", "IndexError", "LookupError",
               "AttributeError", "ZeroDivisionError", "ArithmeticError", "OverflowError",
               "AssertionError", "RuntimeError", "RecursionError", "NotImplementedError",
               "NameError", "UnicodeError", "OSError", "FileNotFoundError", "Exception")
_RAISED: dict[str, type] = {}


def raised_type(etype: str) -> type:
    """A subclass of Raised and of the builtin exception of that name, if it is one a test may
    catch by type, so a test's `except ValueError` still catches the program's ValueError."""
    if etype not in _KEPT_TYPES:
        return Raised
    if etype not in _RAISED:
        _RAISED[etype] = type(etype, (Raised, getattr(builtins, etype)),
                              {"__init__": Raised.__init__, "__str__": Raised.__str__})
    return _RAISED[etype]


