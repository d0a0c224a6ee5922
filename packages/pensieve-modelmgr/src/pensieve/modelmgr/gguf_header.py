"""Read a GGUF file's header (metadata and tensor table) without reading its tensors.

MLX's reader loads every tensor, which is the right thing for serving but far too much for
`pensieve models list`, a memory estimate, or a check before loading. The header also tells
what MLX would rather not: which ggml quantization types a file uses (MLX expands some to
float16, fails on most others with a terse message, and silently drops a few), and whether the
file is shorter than its tensor table says (an interrupted download).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pensieve.utils import ModelLoadError

# ggml's tensor types, by the id stored in the tensor table.
GGML_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip
# What MLX 0.32 does with each: keeps as stored (bytes per weight in memory, counting the
# float16 scale and bias of each 32-weight group), or expands to float16.
KEPT_BYTES_PER_WEIGHT = {"F32": 4.0, "F16": 2.0, "Q4_0": 0.625, "Q4_1": 0.625, "Q8_0": 1.125,
                         "I8": 1.0, "I16": 2.0, "I32": 4.0}  # fmt: skip
EXPANDED_TO_F16 = frozenset({"Q2_K", "Q4_K", "Q6_K", "BF16"})
# Bytes per block and weights per block on disk, to find where each tensor ends.
_BLOCKS = {"F32": (4, 1), "F16": (2, 1), "BF16": (2, 1), "I8": (1, 1), "I16": (2, 1),
           "I32": (4, 1), "I64": (8, 1), "F64": (8, 1), "Q4_0": (18, 32), "Q4_1": (20, 32),
           "Q5_0": (22, 32), "Q5_1": (24, 32), "Q8_0": (34, 32), "Q8_1": (36, 32),
           "Q2_K": (84, 256), "Q3_K": (110, 256), "Q4_K": (144, 256), "Q5_K": (176, 256),
           "Q6_K": (210, 256), "Q8_K": (292, 256)}  # fmt: skip



class GGUFError(ModelLoadError):
    """A GGUF file cannot be used; the message says why and what to do instead.

    Being a ModelLoadError, it reaches the user as written (CLI, API error body) instead of as
    MLX's terse C++ message.
    """


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32


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
        """Bytes on disk, or None for a type whose block size is not known here."""
        if self.type_name not in _BLOCKS:
            return None
        block_bytes, block_weights = _BLOCKS[self.type_name]
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
    except (struct.error, UnicodeDecodeError, EOFError, ValueError) as exc:
        raise GGUFError(
            f"{path} is truncated or not a GGUF file ({path.stat().st_size} bytes): {exc}. "
            "Download it again."
        ) from None


def _read(file: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = file.read(size)
    if len(data) < size:
        raise EOFError("the header ends early")
    return struct.unpack(fmt, data)[0]


def _string(file: BinaryIO) -> str:
    length = _read(file, "<Q")
    data = file.read(length)
    if len(data) < length:
        raise EOFError("the header ends early")
    return data.decode("utf-8")


def _value(file: BinaryIO, kind: int, keep: bool) -> Any:
    if kind == _STRING:
        return _string(file)
    if kind == _ARRAY:
        item_kind, count = _read(file, "<I"), _read(file, "<Q")
        if item_kind in _SCALARS and not keep:  # vocabularies: skip without decoding
            file.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
            return SkippedArray(count)
        items = [_value(file, item_kind, keep) for _ in range(count)]
        return items if keep else SkippedArray(count)
    if kind not in _SCALARS:
        raise ValueError(f"unknown metadata value type {kind}")
    value = _read(file, _SCALARS[kind])
    # float32 metadata as written (1e-05), not its binary expansion (9.99999974e-06).
    return float(str(np.float32(value))) if kind == 6 else value


def _parse(file: BinaryIO, path: Path) -> GGUFHeader:
    if file.read(4) != b"GGUF":
        raise ValueError("no GGUF magic number")
    version = _read(file, "<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    tensor_count, kv_count = _read(file, "<Q"), _read(file, "<Q")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = _string(file)
        kind = _read(file, "<I")
        # Token lists and merges are large and unneeded here; everything else is kept.
        metadata[key] = _value(file, kind, keep=not key.startswith("tokenizer.ggml."))
    tensors = []
    for _ in range(tensor_count):
        name = _string(file)
        dims = [_read(file, "<Q") for _ in range(_read(file, "<I"))]
        type_id, offset = _read(file, "<I"), _read(file, "<Q")
        tensors.append(
            TensorInfo(name, tuple(reversed(dims)), GGML_TYPES.get(type_id, f"type {type_id}"), offset)
        )
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    data_start = -(-file.tell() // alignment) * alignment
    return GGUFHeader(path, metadata, tensors, data_start)
