"""Strict, JSON-safe encoding of test outputs, and the comparison the worker makes on them.

The child (untrusted) encodes what a test's `call` returned and what its `expected` evaluated to;
the worker (trusted) compares the two encodings itself. So an object whose `__eq__` always returns
True, a `bool` standing in for an `int`, or an `int` subclass that lies about equality cannot pass:
only builtin value types are encoded by value, everything else is opaque.

Encoding, one JSON array per value (tag first):

    None -> ["none"]            True -> ["bool", true]        12 -> ["int", "0xc"]
    1.5 -> ["float", "1.5"]     "a" -> ["str", "a"]           b"a" -> ["bytes", "61"]
    [1] -> ["list", [["int", "1"]]]   (tuple, set, frozenset alike; dict -> ["dict", [[k, v], ...]])
    anything else -> ["opaque", "module.QualName"]
    too big or too deep -> ["toolarge", "module.QualName"]

Subclasses of those builtins that keep the builtin's `__eq__` (IntEnum, namedtuple, a plain
`class L(list): pass`) and the stdlib's Counter / OrderedDict / defaultdict are encoded as their
builtin, using only the builtin's own methods; any type that redefines `__eq__` is opaque.

Equality rules (`equal`): tags must match, except that `int` and `float` compare by value as in
Python (`2 == 2.0`), floats with `math.isclose(rel_tol=1e-6)`; `bool` never equals a number;
sets and dict keys compare as multisets of exact encodings; two opaque values of the same type
fall back to the child's own `==` (reported as `child_eq`), which is the only place untrusted
equality is trusted, and only between two instances of one program-defined type.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import collections
import math
from typing import Any

import orjson

MAX_NODES = 200_000     # values encoded per output; beyond this the output is "toolarge"
MAX_DEPTH = 100         # nesting depth; beyond this (or a cycle) the output is "toolarge"
MAX_CHARS = 4 << 20     # total characters of str/bytes per output

Encoded = list  # a tagged JSON array, see the module docstring


class _TooLarge(Exception):
    pass


def type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def encode(value: Any) -> Encoded:
    """Encode `value` strictly (see module docstring); never calls methods of untrusted types."""
    budget = [MAX_NODES, MAX_CHARS]
    try:
        return _encode(value, 0, budget)
    except (_TooLarge, RecursionError):
        return ["toolarge", type_name(value)]


def _encode(value: Any, depth: int, budget: list[int]) -> Encoded:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise _TooLarge
    if value is None:
        return ["none"]
    kind = _value_type(type(value))
    # Below, only the base type's own methods touch `value`: a subclass's overrides never run.
    if kind is None:
        return ["opaque", type_name(value)]
    if kind is bool:
        return ["bool", value is True]
    if kind is int:
        return ["int", hex(int.__index__(value))]   # hex: no int-to-str digit limit applies
    if kind is float:
        return ["float", float.__repr__(value)]
    if kind is complex:
        return ["complex", float.__repr__(complex.real.__get__(value)),
                float.__repr__(complex.imag.__get__(value))]
    if kind is str:
        text = str.__str__(value)
        budget[1] -= len(text)
        if budget[1] < 0:
            raise _TooLarge
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:   # lone surrogates: JSON cannot carry them as text
            return ["strx", text.encode("utf-8", "surrogatepass").hex()]
        return ["str", text]
    if kind is bytes:
        budget[1] -= 2 * len(value)
        if budget[1] < 0:
            raise _TooLarge
        return ["bytes", bytes.hex(value)]
    if kind is dict:
        pairs = [[_encode(k, depth + 1, budget), _encode(v, depth + 1, budget)]
                 for k, v in dict.items(value)]
        return ["dict", sorted(pairs, key=lambda p: _canonical(p[0]))]
    items = [_encode(v, depth + 1, budget) for v in kind.__iter__(value)]
    if kind in (set, frozenset):
        items.sort(key=_canonical)
    return [kind.__name__, items]


_BUILTINS = (bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict)
# Standard-library dict subclasses whose == against a plain dict is dict's own.
_DICT_LIKE = (collections.Counter, collections.OrderedDict, collections.defaultdict)


def _value_type(kind: type) -> type | None:
    """The builtin whose value semantics `kind` has, or None (opaque).

    A subclass of a builtin counts as that builtin only when it does not redefine equality
    (e.g. an IntEnum, a namedtuple), so `class I(int): __eq__ = lambda s, o: True` stays opaque.
    """
    if kind in _BUILTINS:
        return kind
    if kind in _DICT_LIKE:
        return dict
    mro = type.__dict__["__mro__"].__get__(kind)   # not kind.__mro__: a metaclass could lie
    for base in _BUILTINS[1:]:                     # bool cannot be subclassed
        if base in mro:
            defines_eq = next(c for c in mro if "__eq__" in type.__dict__["__dict__"].__get__(c))
            return base if defines_eq is base else None
    return None


def _canonical(encoded: Encoded) -> bytes:
    return orjson.dumps(encoded)


def equal(output: Encoded, expected: Encoded, child_eq: bool | None) -> bool:
    """The worker's verdict on one call/expected test, from the two encodings."""
    tag_o, tag_e = output[0], expected[0]
    if tag_o == "toolarge" or tag_e == "toolarge":
        return False
    if tag_o == "opaque" or tag_e == "opaque":
        return tag_o == tag_e and output[1] == expected[1] and child_eq is True
    return _equal(output, expected)


def _equal(a: Encoded, b: Encoded) -> bool:
    tag_a, tag_b = a[0], b[0]
    if tag_a in ("int", "float") and tag_b in ("int", "float"):
        return _numbers_equal(a, b)
    if tag_a != tag_b:
        return False
    if tag_a in ("list", "tuple"):
        return len(a[1]) == len(b[1]) and all(_equal(x, y) for x, y in zip(a[1], b[1]))
    if tag_a in ("set", "frozenset"):
        return sorted(map(_canonical, a[1])) == sorted(map(_canonical, b[1]))
    if tag_a == "dict":
        keys_a = {_canonical(k): v for k, v in a[1]}
        keys_b = {_canonical(k): v for k, v in b[1]}
        return (keys_a.keys() == keys_b.keys()
                and all(_equal(v, keys_b[k]) for k, v in keys_a.items()))
    if tag_a == "complex":
        return all(_close(float(x), float(y)) for x, y in zip(a[1:], b[1:]))
    if tag_a in ("opaque", "toolarge"):
        return False   # nested opaque values cannot be compared by the worker
    return a[1:] == b[1:]


def _numbers_equal(a: Encoded, b: Encoded) -> bool:
    x, y = _number(a), _number(b)
    if type(x) is int and type(y) is int:
        return x == y
    try:
        return _close(float(x), float(y))
    except OverflowError:   # an int too big for a float cannot be close to any float
        return False


def _number(encoded: Encoded) -> int | float:
    return int(encoded[1], 16) if encoded[0] == "int" else float(encoded[1])


def _close(x: float, y: float) -> bool:
    return x == y or math.isclose(x, y, rel_tol=1e-6)
