"""One cached prompt prefix as a file, and every check it must pass before its KV cache is used.

The file is mlx-lm's prompt-cache file (`save_prompt_cache`: safetensors holding each layer's
state arrays and mlx-lm's cache class names, plain `KVCache` and `QuantizedKVCache` alike; the
engine's batchable `QuantizedKV` is written as the mlx-lm class it extends, and read back as the
engine's own classes) with Pensieve's metadata beside mlx-lm's:

- `pensieve_prefix`: this layout's version;
- `model`: the model's identity (weights fingerprint and weights layout, from the model manager);
- `kv_bits`: the KV cache's bit width, read from the cache objects (`""` for full precision);
- `mlx`, `mlx_lm`: the versions that wrote it;
- `tokens`: the token ids the cache holds (little-endian int32, base64);
- `crc32`: a checksum of every array (shape, dtype and bytes) and scalar of the cache state.

The name is a digest of (layout version, model, bits, tokens), so two servers that keep the
same prefix write the same file, and a file renamed or copied under another key is refused. A
cache is used only when the file's tokens are the prompt's own, its model and versions are this
server's, and the checksum holds: a truncated, corrupted or foreign file can cost a prefill,
never a wrong answer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.cache import KVCache, QuantizedKVCache, load_prompt_cache, save_prompt_cache
from safetensors import SafetensorError, safe_open

from pensieve.engine.quantized_cache import QuantizedKV
from pensieve.utils.prefix_folder import SUFFIX

LAYOUT = "1"
FILE_CLASS: dict[type, type] = {KVCache: KVCache, QuantizedKVCache: QuantizedKVCache, QuantizedKV: QuantizedKVCache}
"""Cache classes whose arrays run along the token axis and can be cut to a prefix, and the
mlx-lm class each is written as; others (rotating windows, SSM states) stay in memory only."""


class BadFile(Exception):
    """A cache file that must not be used; the message says why, for the warning."""


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What a file says about itself, read without loading its arrays."""

    path: Path
    model: str
    kv_bits: int | None
    tokens: np.ndarray
    mlx: str
    mlx_lm: str
    crc: int
    nbytes: int
    mtime: float


def runtime() -> tuple[str, str]:
    """(MLX, mlx-lm) versions of this process: a file written by others is not trusted."""
    return mx.__version__, version("mlx-lm")


def file_key(model: str, kv_bits: int | None, tokens: np.ndarray) -> str:
    digest = hashlib.sha256(f"{LAYOUT}|{model}|{kv_bits or ''}|".encode())
    digest.update(np.asarray(tokens, dtype="<i4").tobytes())
    return digest.hexdigest()[:40]


def kv_bits_of(cache: list[Any]) -> int | None:
    """The bit width of a cache's layers (None: full precision); ValueError if they differ."""
    widths = {
        getattr(layer, "bits", None) if isinstance(layer, QuantizedKVCache) else None
        for layer in cache
    }
    if len(widths) != 1:
        raise ValueError(f"layers of mixed KV bit widths: {sorted(map(str, widths))}")
    return widths.pop()


def persistable(cache: list[Any], n: int) -> bool:
    """Whether the first `n` tokens of `cache` can be cut out and written."""
    return bool(cache) and all(type(layer) in FILE_CLASS and layer.offset >= n for layer in cache)


def compact(cache: list[Any], n: int) -> list[Any]:
    """A copy of the first `n` tokens of `cache`, each array contiguous and evaluated.

    The live cache's buffers run past its tokens (they grow in steps of 256), and a prefix is
    usually shorter than what a sequence left; the copy is exactly what the file holds, made
    on the compute thread so that the writer thread only writes bytes.
    """

    def cut(x: Any) -> Any:
        return mx.contiguous(x[..., :n, :]) if isinstance(x, mx.array) else x

    out = []
    for layer in cache:
        part = FILE_CLASS[type(layer)].from_state(tree_map(cut, layer.state))
        part.offset = n
        out.append(part)
    mx.eval([layer.state for layer in out])
    return out


def checksum(cache: list[Any]) -> int:
    """CRC-32 of every array's shape, dtype and bytes and of every scalar, in state order."""
    crc = 0
    for layer in cache:
        for _, value in tree_flatten(layer.state):
            if isinstance(value, mx.array):
                crc = zlib.crc32(f"{value.shape}{value.dtype}".encode(), crc)
                crc = zlib.crc32(memoryview(value), crc)
            else:
                crc = zlib.crc32(repr(value).encode(), crc)
    return crc


def _encode_tokens(tokens: np.ndarray) -> str:
    return base64.b64encode(np.asarray(tokens, dtype="<i4").tobytes()).decode("ascii")


def _decode_tokens(text: str) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    return np.frombuffer(raw, dtype="<i4").astype(np.int64)


def write(
    file: IO[bytes], tokens: np.ndarray, cache: list[Any], *, model: str, kv_bits: int | None
) -> None:
    """Write a compacted cache (see `compact`) to an open file, synced to the disk."""
    mlx_version, mlx_lm_version = runtime()
    metadata = {
        "pensieve_prefix": LAYOUT,
        "model": model,
        "kv_bits": "" if kv_bits is None else str(kv_bits),
        "mlx": mlx_version,
        "mlx_lm": mlx_lm_version,
        "tokens": _encode_tokens(tokens),
        "crc32": str(checksum(cache)),
    }
    save_prompt_cache(file, cache, metadata)  # type: ignore[arg-type]  # MLX writes to file objects
    file.flush()
    os.fsync(file.fileno())


def read_header(path: Path) -> FileHeader:
    """The file's metadata, checked for shape and name; BadFile if it is not a usable file."""
    try:
        stat = path.stat()
        with safe_open(str(path), framework="numpy") as handle:
            flat = handle.metadata() or {}
    except SafetensorError as exc:
        raise BadFile(f"unreadable ({exc})") from None
    # mlx-lm flattens [our metadata, class names, scalars] into "0.<key>", "1.<i>", "2.<i>.<j>".
    meta = {key[2:]: value for key, value in flat.items() if key.startswith("0.")}
    if meta.get("pensieve_prefix") != LAYOUT:
        raise BadFile(
            f"not a prefix file of this layout (pensieve_prefix={meta.get('pensieve_prefix')!r})"
        )
    try:
        tokens = _decode_tokens(meta["tokens"])
        bits = int(meta["kv_bits"]) if meta["kv_bits"] else None
        header = FileHeader(
            path,
            meta["model"],
            bits,
            tokens,
            meta["mlx"],
            meta["mlx_lm"],
            int(meta["crc32"]),
            stat.st_size,
            stat.st_mtime,
        )
    except (KeyError, ValueError) as exc:
        raise BadFile(f"damaged metadata ({exc!r})") from None
    if file_key(header.model, header.kv_bits, header.tokens) != path.name.removesuffix(SUFFIX):
        raise BadFile("its name does not match its contents")
    return header


def check_runtime(header: FileHeader) -> None:
    mlx_version, mlx_lm_version = runtime()
    if (header.mlx, header.mlx_lm) != (mlx_version, mlx_lm_version):
        raise BadFile(
            f"written by MLX {header.mlx} / mlx-lm {header.mlx_lm}; this server runs MLX {mlx_version} / mlx-lm {mlx_lm_version}"
        )


def read(header: FileHeader, template: list[Any]) -> list[Any]:
    """The file's KV cache, evaluated, after every check, in the classes of `template` (a fresh
    cache of the engine's); BadFile if a check fails."""
    check_runtime(header)
    try:
        cache, meta = load_prompt_cache(str(header.path), return_metadata=True)
        mx.eval([layer.state for layer in cache])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise BadFile(f"unreadable ({exc})") from None
    if _decode_tokens(meta.get("tokens", "")).tolist() != header.tokens.tolist():
        raise BadFile("it changed while being read")
    if len(cache) != len(template) or any(type(c) is not FILE_CLASS.get(type(t)) for c, t in zip(cache, template, strict=False)):
        raise BadFile("its layers are not this model's")
    if any(_quantization(c) != _quantization(t) for c, t in zip(cache, template, strict=True)):
        raise BadFile("its KV quantization is not this engine's")
    if any(layer.offset != len(header.tokens) for layer in cache):
        raise BadFile("its layers do not hold the tokens it names")
    if checksum(cache) != header.crc:
        raise BadFile("its checksum does not match (corrupted)")
    return [type(t).from_state(c.state) for c, t in zip(cache, template, strict=True)]


def _quantization(layer: Any) -> tuple[int, int] | None:
    return (layer.bits, layer.group_size) if isinstance(layer, QuantizedKVCache) else None
