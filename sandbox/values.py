"""Strict, JSON-safe encoding of values that cross between the trusted side and the program.

Outputs travel from the child (untrusted) to the worker as these encodings; call arguments travel
the other way. The worker decodes outputs into fresh builtin values (`decode`) or compares two
encodings itself (`equal`), so an object whose `__eq__` always returns True, a `bool` standing
in for an `int`, or an `int` subclass that lies about equality cannot pass: only builtin value
types are encoded by value, everything else is a reference the worker cannot compare.

Encoding, one JSON array per value (tag first):

    None -> ["none"]            True -> ["bool", true]        12 -> ["int", "0xc"]
    1.5 -> ["float", "1.5"]     "a" -> ["str", "a"]           b"a" -> ["bytes", "61"]
    [1] -> ["list", [["int", "1"]]]   (tuple, set, frozenset alike; dict -> ["dict", [[k, v], ...]])
    anything else -> ["opaque", "module.QualName"], or what `encode`'s `other` hook returns:
        the child keeps the object and sends ["ref", id, "module.QualName"]; the worker sends
        ["ref", id] or ["name", "f"] for the program's objects it holds references to
    too big or too deep -> ["toolarge", "module.QualName"]

Subclasses of those builtins that keep the builtin's `__eq__` (IntEnum, namedtuple, a plain
`class L(list): pass`) and the stdlib's Counter / OrderedDict / defaultdict are encoded as their
builtin, using only the builtin's own methods; any type that redefines `__eq__` is opaque.

Equality rules (`equal`): tags must match, except that `int` and `float` compare by value as in
Python (`2 == 2.0`), floats with `math.isclose(rel_tol=1e-6)`; `bool` never equals a number;
sets and dict keys compare as multisets of exact encodings; an opaque value, a reference or a
too-large value equals nothing. No program code takes part in the comparison.

Runs in the jail: stdlib and orjson only.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Callable

import orjson

MAX_NODES = 200_000     # values encoded per output; beyond this the output is "toolarge"
MAX_DEPTH = 100         # nesting depth; beyond this (or a cycle) the output is "toolarge"
MAX_CHARS = 4 << 20     # total characters of str/bytes/int digits per output

Encoded = list  # a tagged JSON array, see the module docstring
Other = Callable[[Any], Encoded]   # encodes a value that has no value encoding of its own


class _TooLarge(Exception):
    pass


def type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def opaque(value: Any) -> Encoded:
    return ["opaque", type_name(value)]


def encode(value: Any, other: Other = opaque) -> Encoded:
    """Encode `value` strictly (see module docstring); never calls methods of untrusted types,
    except `other`, which gets every value that has no value encoding."""
    budget = [MAX_NODES, MAX_CHARS]
    try:
        return _encode(value, 0, budget, other)
    except (_TooLarge, RecursionError):
        return ["toolarge", type_name(value)]


def _encode(value: Any, depth: int, budget: list[int], other: Other) -> Encoded:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise _TooLarge
    if value is None:
        return ["none"]
    kind = _value_type(type(value))
    # Below, only the base type's own methods touch `value`: a subclass's overrides never run.
    if kind is None:
        return other(value)
    if kind is bool:
        return ["bool", value is True]
    if kind is int:
        digits = hex(int.__index__(value))   # hex: no int-to-str digit limit applies
        budget[1] -= len(digits)
        if budget[1] < 0:
            raise _TooLarge
        return ["int", digits]
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
        pairs = [[_encode(k, depth + 1, budget, other), _encode(v, depth + 1, budget, other)]
                 for k, v in dict.items(value)]
        return ["dict", sorted(pairs, key=lambda p: _canonical(p[0]))]
    items = [_encode(v, depth + 1, budget, other) for v in kind.__iter__(value)]
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


def tags(encoded: Encoded) -> set[str]:
    """Every tag in an encoding, containers' contents included (e.g. is an opaque value in it?)."""
    out = {encoded[0]}
    if encoded[0] in ("list", "tuple", "set", "frozenset"):
        for item in encoded[1]:
            out |= tags(item)
    elif encoded[0] == "dict":
        for k, v in encoded[1]:
            out |= tags(k) | tags(v)
    return out


# ---------------------------------------------------------------------------------- decoding

Ref = Callable[[list], Any]   # an encoded reference (["ref", ...] or ["name", ...]) -> an object


def decode(encoded: Any, ref: Ref) -> Any:
    """Rebuild fresh builtin values from an encoding; references go to `ref`. Raises ValueError
    on anything that is not a well-formed encoding (which, from the child, is a broken channel)."""
    try:
        return _decode(encoded, ref)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise ValueError(f"malformed value encoding ({type(exc).__name__}: {exc})") from None


def _decode(enc: Any, ref: Ref) -> Any:
    if type(enc) is not list or not enc or type(enc[0]) is not str:
        raise ValueError("not a tagged array")
    tag = enc[0]
    decoder = _SCALARS.get(tag)
    if decoder is not None:
        return decoder(*enc[1:])
    if tag in _CONTAINERS:
        (items,) = enc[1:]
        if type(items) is not list:
            raise ValueError(f"{tag} items are not a list")
        if tag == "dict":
            return {_decode(k, ref): _decode(v, ref) for k, v in items}
        return _CONTAINERS[tag](_decode(v, ref) for v in items)
    if tag in ("ref", "name", "opaque", "toolarge"):
        return ref(enc)
    raise ValueError(f"unknown tag {tag!r}")


def _text(value: Any) -> str:
    if type(value) is not str:
        raise ValueError("expected a string")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("expected true or false")
    return value


_SCALARS: dict[str, Callable[..., Any]] = {
    "none": lambda: None,
    "bool": _bool,
    "int": lambda digits: int(_text(digits), 16),
    "float": lambda text: float(_text(text)),
    "complex": lambda re, im: complex(float(_text(re)), float(_text(im))),
    "str": _text,
    "strx": lambda hexed: bytes.fromhex(_text(hexed)).decode("utf-8", "surrogatepass"),
    "bytes": lambda hexed: bytes.fromhex(_text(hexed)),
}
_CONTAINERS: dict[str, Callable[[Any], Any]] = {
    "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "dict": dict}


# -------------------------------------------------------------------------------- comparison

def equal(output: Encoded, expected: Encoded) -> bool:
    """The worker's verdict on one CALL == EXPECTED test, from the two encodings."""
    return _equal(output, expected)


def _equal(a: Encoded, b: Encoded) -> bool:
    tag_a, tag_b = a[0], b[0]
    if tag_a in ("int", "float") and tag_b in ("int", "float"):
        return _numbers_equal(a, b)
    if tag_a != tag_b or tag_a in _UNCOMPARABLE:
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
    if tag_a == "bool":
        return a[1] is b[1]   # JSON true/false decode to the singletons; 1 is not true
    return a[1:] == b[1:]


# Values no encoding comparison can judge: the program's own objects, and outputs too big to send.
_UNCOMPARABLE = ("opaque", "ref", "name", "toolarge")


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
