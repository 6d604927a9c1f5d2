"""Task sets from the Hugging Face ecosystem, with no hub access: a local `datasets` directory
(`save_to_disk`), a Parquet file, or a JSONL file, with a column mapping onto the task fields.

    --data.train_tasks hf:data/my-tasks --data.columns instruction=question,tests=test_list

`columns` maps a task field (the plain format's `task_id`, `entry_point`, `tests`, `prompt`,
`signature`, `instruction`, `reference`, `seen_tests`, `setup`; or a HumanEval or MBPP field) to
the dataset's column; a field without a mapping is read from the column of the same name. The
mapped rows are then read like the records of a task file (format detected from the first), and
errors name the dataset and row. A mapped column the dataset lacks is an error that lists the
columns it has.
"""
from __future__ import annotations

from pathlib import Path

from common.config import pairs
from common.errors import MissingFile, TaskFileError
from engine.records import Task


def parse_columns(columns: str) -> dict[str, str]:
    """`field=column,field=column` -> {field: column}."""
    return dict(pairs(columns, "data.columns", "FIELD=COLUMN"))


def open_dataset(path: str | Path):
    """A `datasets.Dataset` from a save_to_disk directory, a .parquet or a .jsonl file."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise MissingFile(f"dataset {path} does not exist")
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise TaskFileError(f"{path}: a dataset with splits {sorted(ds)}; point at one "
                                    "split's directory")
            ds = next(iter(ds.values()))
        return ds
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if path.suffix in (".jsonl", ".json"):
        return datasets.Dataset.from_json(str(path))
    raise TaskFileError(f"{path}: not a datasets directory, .parquet or .jsonl")


def load_hf(path: str, columns: str = "", verify_seen: bool = True, require_tests: bool = True
            ) -> list[Task]:
    from engine.tasks.loaders import parse_records

    mapping = parse_columns(columns)
    ds = open_dataset(path)
    missing = [c for c in mapping.values() if c not in ds.column_names]
    if missing:
        raise TaskFileError(f"{path}: no column {missing[0]!r} (data.columns maps to it); the "
                            f"dataset has {', '.join(ds.column_names)}")
    renamed = {column: field for field, column in mapping.items()}

    def records():
        for i, row in enumerate(ds):
            rec = {renamed.get(k, k): v for k, v in row.items()
                   if k in renamed or k not in mapping}
            yield f"{path}:row {i}", rec
    return parse_records(records(), str(path), verify_seen, require_tests)
