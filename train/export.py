"""Export a distilled student: the LoRA adapter merged into its base model, as a plain model
directory that transformers, vLLM, or llama.cpp's converter load without PEFT.

    python -m train.export --model <base dir> --adapter runs/x/train/adapter --out student-merged
    # for llama.cpp / Ollama, convert the directory with llama.cpp's own script:
    python convert_hf_to_gguf.py student-merged --outfile student.gguf --outtype bf16

The merge is W + (alpha / r) * B A on each adapted layer (PEFT's merge_and_unload), in float32,
then saved in the base model's dtype. `export.json` records what was merged: the base by path,
the adapter by content hash.
(The `gguf` package here reads and writes GGUF files but has no Hugging Face converter; that
script lives in llama.cpp.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from common.errors import MissingFile, PersdError


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def export(model: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Merge `adapter` into `model` and write the result to `out`; returns `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, adapter, out = Path(model), Path(adapter), Path(out)
    for path, what in ((model / "config.json", "--model"),
                       (adapter / "adapter_config.json", "--adapter")):
        if not path.exists():
            raise MissingFile(f"{what}: {path} does not exist")
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(model), "dtype", None) or torch.float32
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.to(dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype)))
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    (out / "export.json").write_text(json.dumps({
        "base": str(model), "adapter": str(adapter), "adapter_sha256": _digest(adapter),
        "dtype": str(dtype).removeprefix("torch.")}, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="base model directory")
    ap.add_argument("--adapter", required=True, help="LoRA adapter directory")
    ap.add_argument("--out", required=True, help="directory for the merged model")
    args = ap.parse_args(argv)
    try:
        print(export(args.model, args.adapter, args.out))
    except PersdError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
