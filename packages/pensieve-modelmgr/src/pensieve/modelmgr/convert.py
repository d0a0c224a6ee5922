"""Turn a Hugging Face model or a GGUF file into a quantized MLX model in the store.

Hugging Face folders (local, or a repo fetched through ``hub``) go through mlx-lm's own
converter, which knows every architecture's weight layout. GGUF files are loaded by Pensieve's
GGUF loader and saved as an MLX folder, which then loads without the GGUF translation; with
`bits`, their weights are re-quantized, which is how a K-quant file (that MLX expands to
float16) becomes a compact MLX model.
"""

from __future__ import annotations

from pathlib import Path

from pensieve.modelmgr.facts import model_facts
from pensieve.modelmgr.gguf import load_gguf, save_mlx_folder
from pensieve.modelmgr.hub import download_snapshot
from pensieve.modelmgr.sources import ModelSource, source_from_path
from pensieve.modelmgr.store import ModelStore, StoreEntry, write_origin
from pensieve.utils import InvalidRequestError, ModelLoadError

BITS = (2, 3, 4, 5, 6, 8)


def _locate(spec: str, revision: str | None) -> ModelSource:
    """A local file or folder as given, else a Hugging Face repo fetched into its cache."""
    path = Path(spec).expanduser()
    if path.exists():
        return source_from_path(path.resolve())
    return source_from_path(download_snapshot(spec, revision=revision), spec)


def default_name(spec: str, bits: int | None) -> str:
    """`org/model-4bit` for a repo, `<folder>-4bit` or `<file stem>` for local files."""
    path = Path(spec).expanduser()
    if path.exists():
        base = path.stem if path.suffix.lower() == ".gguf" else path.resolve().name
    else:
        base = spec
    return f"{base}-{bits}bit" if bits else base


def convert(
    spec: str,
    store: ModelStore,
    *,
    bits: int | None = None,
    group_size: int = 64,
    name: str | None = None,
    revision: str | None = None,
    replace: bool = False,
) -> StoreEntry:
    """Convert `spec` (path or repo id) into the store; returns the new entry.

    `bits` None quantizes a Hugging Face checkpoint to 4 bits and keeps a GGUF file's own
    quantization.
    """
    if bits is not None and bits not in BITS:
        raise InvalidRequestError(f"--bits must be one of {', '.join(map(str, BITS))}")
    if group_size not in (32, 64, 128):
        raise InvalidRequestError("--group-size must be 32, 64 or 128")
    source = _locate(spec, revision)
    if bits is None and source.kind == "mlx":
        bits = 4  # an unquantized checkpoint is converted to be quantized; GGUF may stay as is
    name = name or default_name(spec, bits)
    store.entry_path(name)  # a bad name fails before the (long) conversion
    with store.staging(name, replace=replace) as staging:
        if source.kind == "mlx":
            _convert_folder(source, staging, bits or 4, group_size)
        else:
            _convert_gguf(source.path, staging, bits, group_size)
        write_origin(staging, name, source="converted", origin=spec, bits=bits, group_size=group_size)
        model_facts(source_from_path(staging, name))  # what was written must load
    entry = store.find(name)
    assert entry is not None
    return entry


def _convert_folder(source: ModelSource, out: Path, bits: int, group_size: int) -> None:
    from mlx_lm.convert import convert as mlx_convert

    facts = model_facts(source)
    if "quantization" in facts.config:
        raise ModelLoadError(
            f"{source.name} is already quantized ({facts.quantization}); use it as it is "
            "(`pensieve models pull`, or `pensieve start --model <folder>`)"
        )
    mlx_convert(str(source.path), str(out), quantize=True, q_bits=bits, q_group_size=group_size)


def _convert_gguf(path: Path, out: Path, bits: int | None, group_size: int) -> None:
    from mlx_lm.utils import dequantize_model, quantize_model

    model, tokenizer, config = load_gguf(path)
    if bits is not None:
        config.pop("quantization", None)
        model = dequantize_model(model)
        model, config = quantize_model(model, config, group_size, bits)
    save_mlx_folder(model, tokenizer, config, out)
