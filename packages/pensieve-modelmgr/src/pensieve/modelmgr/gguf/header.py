"""Read a GGUF file's header (metadata and tensor table) without reading its tensors.

MLX's reader loads every tensor, which is the right thing for serving but far too much for
`pensieve models list`, a memory estimate, or a check before loading. The header also tells
what MLX would rather not: which ggml quantization types a file uses (MLX expands some to
float16, fails on most others with a terse message, and silently drops a few), and whether the
file is shorter than its tensor table says (an interrupted download).

llama.cpp's `gguf` package names the ggml types, their block sizes and the value types used
here. Its GGUFReader walks the header too, but it decodes every vocabulary entry and merge into
a numpy view of its own: 1.9 s for the embedded 135M model's header (49k tokens, 48k merges),
where this walk, which skips the token lists it does not need, takes 0.03 s
(`benchmarks/gguf_header_bench.py`). `pensieve models list`, the memory estimate and the check
before every load read headers, so the walk stays.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    READER_SUPPORTED_VERSIONS,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
)

from pensieve.modelmgr.gguf.errors import GGUFError

# What MLX 0.32 does with each: keeps as stored (bytes per weight in memory, counting the
# float16 scale and bias of each 32-weight group), or expands to float16.
KEPT_BYTES_PER_WEIGHT = {"F32": 4.0, "F16": 2.0, "Q4_0": 0.625, "Q4_1": 0.625, "Q8_0": 1.125,
                         "I8": 1.0, "I16": 2.0, "I32": 4.0}  # fmt: skip
EXPANDED_TO_F16 = frozenset({"Q2_K", "Q4_K", "Q6_K", "BF16"})
# Little-endian numpy types of GGUF's scalar values, as llama.cpp's own reader maps them.
_SCALARS = {kind: np.dtype(t).newbyteorder("<") for kind, t in GGUFReader.gguf_scalar_to_np.items()}


@dataclass(frozen=True, slots=True)
class SkippedArray:
    """A metadata array not decoded (token lists, merges); only its length is kept."""

    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def file_bytes(self) -> int | None:
        """Bytes on disk, or None for a type id the `gguf` package does not know."""
        if self.type_name not in GGMLQuantizationType.__members__:
            return None
        block_weights, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[self.type_name]]
        return -(-self.elements // block_weights) * block_bytes

    @property
    def memory_bytes(self) -> int:
        """Bytes once MLX has loaded it (kept packed, or expanded to float16)."""
        return int(self.elements * KEPT_BYTES_PER_WEIGHT.get(self.type_name, 2.0))


@dataclass(slots=True)
class GGUFHeader:
    path: Path
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0

    @property
    def type_counts(self) -> Counter[str]:
        return Counter(t.type_name for t in self.tensors)

    @property
    def quantization(self) -> str:
        """The file's main weight type, e.g. `Q4_0` (2-D tensors; norms are always F32)."""
        matrices = Counter(t.type_name for t in self.tensors if len(t.shape) >= 2)
        return matrices.most_common(1)[0][0] if matrices else "F32"

    @property
    def memory_bytes(self) -> int:
        return sum(t.memory_bytes for t in self.tensors)

    def check_loadable(self) -> None:
        """Raise a GGUFError naming what MLX cannot read, before MLX tries."""
        unsupported = sorted(
            {t.type_name for t in self.tensors if t.type_name not in KEPT_BYTES_PER_WEIGHT}
            - EXPANDED_TO_F16
        )
        if unsupported:
            raise GGUFError(
                f"{self.path.name} uses the GGUF quantization {', '.join(unsupported)}, which MLX "
                "cannot read. Download the Q4_0, Q4_1, Q8_0 or F16 variant of this model (or an MLX "
                "model), or convert the original weights with `pensieve models convert "
                "<repo-or-folder> --bits 4`."
            )
        size = self.path.stat().st_size
        ends = [self.data_start + t.offset + (t.file_bytes or 0) for t in self.tensors]
        if ends and max(ends) > size:
            raise GGUFError(
                f"{self.path} is truncated: its tensors need {max(ends)} bytes but the file has "
                f"{size}; the download was probably interrupted. Download it again."
            )


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse the header; GGUFError if the file is missing, not GGUF or cut short."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _parse(file, path)
    except FileNotFoundError:
        raise GGUFError(f"GGUF file not found: {path}. Check the path or download it again.") from None
    except (UnicodeDecodeError, EOFError, ValueError) as exc:
        raise GGUFError(
            f"{path} is truncated or not a GGUF file ({path.stat().st_size} bytes): {exc}. "
            "Download it again."
        ) from None


def _bytes(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) < size:
        raise EOFError("the header ends early")
    return data


def _uint(file: BinaryIO, size: int) -> int:
    """A count, length, type id or offset: a little-endian unsigned integer of `size` bytes."""
    return int.from_bytes(_bytes(file, size), "little")


def _string(file: BinaryIO) -> str:
    return _bytes(file, _uint(file, 8)).decode("utf-8")


def _value(file: BinaryIO, kind: GGUFValueType, keep: bool) -> Any:
    if kind == GGUFValueType.STRING:
        return _string(file)
    if kind == GGUFValueType.ARRAY:
        item_kind, count = GGUFValueType(_uint(file, 4)), _uint(file, 8)
        if keep:
            return [_value(file, item_kind, keep) for _ in range(count)]
        # Vocabularies, token types and merges: skipped, not decoded.
        if item_kind in _SCALARS:
            file.seek(count * _SCALARS[item_kind].itemsize, 1)
        for _ in range(0 if item_kind in _SCALARS else count):
            if item_kind == GGUFValueType.STRING:
                file.seek(_uint(file, 8), 1)
            else:
                _value(file, item_kind, keep)
        return SkippedArray(count)
    value = np.frombuffer(_bytes(file, _SCALARS[kind].itemsize), _SCALARS[kind])[0]
    # float32 metadata as written (1e-05), not its binary expansion (9.99999974e-06).
    return float(str(value)) if kind == GGUFValueType.FLOAT32 else value.item()


def _type_name(type_id: int) -> str:
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


def _parse(file: BinaryIO, path: Path) -> GGUFHeader:
    if file.read(4) != b"GGUF":
        raise ValueError("no GGUF magic number")
    version = _uint(file, 4)
    if version not in READER_SUPPORTED_VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported")
    tensor_count, kv_count = _uint(file, 8), _uint(file, 8)
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = _string(file)
        kind = GGUFValueType(_uint(file, 4))  # ValueError: not GGUF after all
        # Token lists and merges are large and unneeded here; everything else is kept.
        metadata[key] = _value(file, kind, keep=not key.startswith("tokenizer.ggml."))
    tensors = []
    for _ in range(tensor_count):
        name = _string(file)
        dims = [_uint(file, 8) for _ in range(_uint(file, 4))]
        type_id, offset = _uint(file, 4), _uint(file, 8)
        tensors.append(TensorInfo(name, tuple(reversed(dims)), _type_name(type_id), offset))
    alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-file.tell() // alignment) * alignment
    return GGUFHeader(path, metadata, tensors, data_start)
