"""A quantized KV cache that batches: mlx-lm's `QuantizedKVCache` plus a batch twin.

`performance.kv_cache_bits` (8 or 4) stores keys and values packed, with a scale and bias per
group of 64 elements: at 4 bits a token's KV takes about 28% of its bfloat16 size, which is the
difference between an 8k and a 32k window for a 7B model on a 16 GB Mac. mlx-lm has the
single-sequence cache and the quantized attention kernel, but its batching (`BatchGenerator`)
merges caches through `merge`/`extract`/`extend`/`filter`, which only the plain caches have.
`BatchQuantizedKVCache` is mlx-lm's `BatchKVCache` with each of keys and values held as the
(packed, scales, biases) triple `mx.quantize` returns; models pick the quantized attention path
from its `bits` attribute exactly as they do for mlx-lm's own quantized cache.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import (
    KVCache,
    QuantizedKVCache,
    dynamic_roll,
    make_prompt_cache,
)

from pensieve.metal import KV_GROUP_SIZE, quantized_kv_runs

GROUP_SIZE = KV_GROUP_SIZE

Triple = tuple[mx.array, mx.array, mx.array]


def supports_quantized_kv(model: Any, bits: int) -> bool:
    """Whether this model's KV cache can be quantized to `bits` on this backend."""
    args = getattr(model, "args", None)
    heads = getattr(args, "num_attention_heads", None)
    head_dim = getattr(args, "head_dim", None) or (getattr(args, "hidden_size", 0) // heads if heads else 0)
    return quantized_kv_runs(bits, head_dim)


def make_cache(model: Any, bits: int | None) -> list[Any]:
    """A fresh cache for one sequence: mlx-lm's own, with full-attention layers quantized."""
    cache = make_prompt_cache(model)
    if bits is None:
        return cache
    return [QuantizedKV(GROUP_SIZE, bits) if type(c) is KVCache else c for c in cache]


class QuantizedKV(QuantizedKVCache):
    """mlx-lm's QuantizedKVCache, which can join a batch."""

    @classmethod
    def merge(cls, caches: list[QuantizedKV]) -> BatchQuantizedKVCache:
        return BatchQuantizedKVCache.merge(caches)


def _zeros(like: Triple, batch: int, length: int) -> Triple:
    return tuple(mx.zeros((batch, x.shape[1], length, x.shape[3]), dtype=x.dtype) for x in like)  # type: ignore[return-value]


def _slice(triple: Triple, *index: Any) -> Triple:
    return tuple(x[index] for x in triple)  # type: ignore[return-value]


def _pad(triple: Triple, left: int, right: int) -> Triple:
    if left == 0 and right == 0:
        return triple
    return tuple(mx.pad(x, [(0, 0), (0, 0), (left, right), (0, 0)]) for x in triple)  # type: ignore[return-value]


class BatchQuantizedKVCache:
    """Rows left-padded to a common length, as in mlx-lm's BatchKVCache (the methods its
    `BatchGenerator` calls, with the same meaning)."""

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = GROUP_SIZE, bits: int = 8) -> None:
        self.keys: Triple | None = None
        self.values: Triple | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-n for n in left_padding])
        self.group_size = group_size
        self.bits = bits
        self._idx = 0
        self._right_padding: mx.array | None = None

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Triple, Triple]:
        prev, n = self._idx, keys.shape[2]
        new_k = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        new_v = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        if self.keys is None or self.values is None or prev + n > self.keys[0].shape[2]:
            grow = (self.step + n - 1) // self.step * self.step
            if self.keys is None or self.values is None:
                self.keys, self.values = _zeros(new_k, keys.shape[0], grow), _zeros(new_v, keys.shape[0], grow)
            else:
                kept_k, kept_v = _slice(self.keys, Ellipsis, slice(0, prev), slice(None)), _slice(self.values, Ellipsis, slice(0, prev), slice(None))
                self.keys = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(kept_k, _zeros(new_k, keys.shape[0], grow), strict=True))  # type: ignore[assignment]
                self.values = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(kept_v, _zeros(new_v, keys.shape[0], grow), strict=True))  # type: ignore[assignment]
        self.offset = self.offset + n
        self._idx += n
        for store, new in ((self.keys, new_k), (self.values, new_v)):
            for i in range(3):
                store[i][..., prev : self._idx, :] = new[i]
        return self._fetch()

    def _fetch(self) -> tuple[Triple, Triple]:
        assert self.keys is not None and self.values is not None
        cut = (Ellipsis, slice(0, self._idx), slice(None))
        return _slice(self.keys, *cut), _slice(self.values, *cut)

    def prepare(self, *, left_padding: list[int] | None = None, lengths: Any = None, right_padding: list[int] | None = None) -> None:
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("Left padding can only be added to an empty BatchQuantizedKVCache")
            pad = mx.array(left_padding)
            self.left_padding += pad
            self.offset = self.offset - pad
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        if self._right_padding is None or self.keys is None or self.values is None:
            return
        shift = self._right_padding[:, None]
        self.keys = tuple(dynamic_roll(x, shift, axis=2) for x in self.keys)  # type: ignore[assignment]
        self.values = tuple(dynamic_roll(x, shift, axis=2) for x in self.values)  # type: ignore[assignment]
        self.offset = self.offset - self._right_padding
        self.left_padding += self._right_padding
        self._right_padding = None

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values, self.offset, self.left_padding, self._idx

    @state.setter
    def state(self, value: tuple[Any, ...]) -> None:
        self.keys, self.values, self.offset, self.left_padding, self._idx = value

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> mx.array:
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    def filter(self, batch_indices: Any) -> None:
        if self.keys is not None and self.values is not None:
            self.keys, self.values = _slice(self.keys, batch_indices), _slice(self.values, batch_indices)
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        trim = min(self.left_padding.tolist())
        if trim > 0:
            if self.keys is not None and self.values is not None:
                cut = (Ellipsis, slice(trim, None), slice(None))
                self.keys, self.values = _slice(self.keys, *cut), _slice(self.values, *cut)
            self._idx -= trim
            self.left_padding -= trim

    def extend(self, other: BatchQuantizedKVCache) -> None:
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        top = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        like_k, like_v = next((c.keys, c.values) for c in (self, other) if c.keys is not None)

        def aligned(c: BatchQuantizedKVCache) -> tuple[Triple, Triple, mx.array, mx.array]:
            rows = c.offset.shape[0]
            k = c.keys if c.keys is not None else _zeros(like_k, rows, 0)  # type: ignore[arg-type]
            v = c.values if c.values is not None else _zeros(like_v, rows, 0)  # type: ignore[arg-type]
            left = top - c._idx
            right = size - k[0].shape[2] - left
            if right < 0:
                k, v = _slice(k, Ellipsis, slice(None, right), slice(None)), _slice(v, Ellipsis, slice(None, right), slice(None))
                right = 0
            return _pad(k, left, right), _pad(v, left, right), c.offset, c.left_padding + left

        a, b = aligned(self), aligned(other)
        self.keys = tuple(mx.concatenate([x, y]) for x, y in zip(a[0], b[0], strict=True))  # type: ignore[assignment]
        self.values = tuple(mx.concatenate([x, y]) for x, y in zip(a[1], b[1], strict=True))  # type: ignore[assignment]
        self.offset = mx.concatenate([a[2], b[2]])
        self.left_padding = mx.concatenate([a[3], b[3]])
        self._idx = top

    def extract(self, idx: int) -> QuantizedKV:
        assert self.keys is not None and self.values is not None
        padding = self.left_padding.tolist()[idx]
        cut = (slice(idx, idx + 1), slice(None), slice(padding, self._idx))
        cache = QuantizedKV(self.group_size, self.bits)
        cache.keys = tuple(mx.contiguous(x) for x in _slice(self.keys, *cut))
        cache.values = tuple(mx.contiguous(x) for x in _slice(self.values, *cut))
        cache.offset = self._idx - padding
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedKV]) -> BatchQuantizedKVCache:
        lengths = [c.offset for c in caches]
        longest = max(lengths)
        first = caches[0]
        merged = cls([longest - n for n in lengths], first.group_size, first.bits)
        if longest == 0:
            return merged
        like_k, like_v = next((c.keys, c.values) for c in caches if c.keys is not None)
        keys, values = _zeros(like_k, len(caches), longest), _zeros(like_v, len(caches), longest)
        for row, c in enumerate(caches):
            if c.keys is None or c.offset == 0:
                continue
            pad = longest - c.offset
            for store, own in ((keys, c.keys), (values, c.values)):
                for i in range(3):
                    store[i][row : row + 1, :, pad:longest] = own[i][..., : c.offset, :]
        merged.keys, merged.values = keys, values
        merged.offset += longest
        merged._idx = longest
        return merged

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return sum(x.nbytes for x in (*self.keys, *self.values))
