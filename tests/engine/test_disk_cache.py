"""The prefix cache's disk tier on real KV caches: what is kept, what is found, what is refused.

Caches come from the tiny random-weight llama's own prefill (and, for the quantized layout,
mlx-lm's `QuantizedKVCache`), written and read through the real files. A "restart" is a new
store over the same folder. Every bad file must cost a prefill and a warning, never a cache.
"""

from __future__ import annotations

import copy
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.models.cache import KVCache, make_prompt_cache

from pensieve.engine import disk_files
from pensieve.engine.disk_cache import DiskPrefixStore, DiskTier
from pensieve.engine.prefix_cache import PrefixCache
from pensieve.engine.quantized_cache import QuantizedKV

MIN = 64
PROMPT = [(i * 7919) % 40000 + 100 for i in range(600)]
"""Six hundred token ids of the embedded vocabulary, without repeats that would look like structure."""


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def prefilled(tiny: Any) -> list[Any]:
    """The tiny model's KV cache of PROMPT, as a finished sequence leaves it."""
    model, _ = tiny
    cache = make_prompt_cache(model)
    model(mx.array(PROMPT)[None], cache=cache)
    mx.eval([c.state for c in cache])
    return cache


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Any]:
    """Stores over one folder (each a "server", or the same one after a restart), closed at the end."""
    made: list[DiskPrefixStore] = []

    def make(max_bytes: int = 1 << 30, model: str = "tiny", kv_bits: int | None = None) -> DiskPrefixStore:
        """A store for an engine of the tiny model's two layers, at `kv_bits` (None: plain)."""
        template = [KVCache() if kv_bits is None else QuantizedKV(64, kv_bits) for _ in range(2)]
        store = DiskPrefixStore(DiskTier(tmp_path / "prefixes", max_bytes, model, MIN), template=template)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def kept(store: DiskPrefixStore, tokens: list[int], cache: list[Any]) -> Path:
    """Store and wait for the file; its path."""
    store.store(tokens, cache)
    store.flush()
    key = disk_files.file_key(store.model, store.kv_bits, tokens)
    path = store.directory / f"{key}.safetensors"
    assert path.is_file()
    return path


def next_logits(model: Any, cache: list[Any], token: int) -> mx.array:
    return model(mx.array([[token]]), cache=copy.deepcopy(cache))[0, -1]


def test_a_restarted_server_finds_the_prefix_and_computes_what_the_original_cache_computes(
    tiny: Any, prefilled: list[Any], stores: Any
) -> None:
    model, _ = tiny
    kept(stores(), PROMPT[:400], prefilled)  # the lasting part: the sequence held 600 tokens
    again = stores()  # a new process over the same folder
    found = again.lookup([*PROMPT[:400], 5, 6, 7])
    assert found is not None
    cache, n = found
    assert n == 400 and all(layer.offset == 400 for layer in cache)
    reference = copy.deepcopy(prefilled)
    for layer in reference:
        layer.trim(200)
    assert mx.array_equal(next_logits(model, cache, 5), next_logits(model, reference, 5))


def test_a_prompt_that_leaves_the_prefix_midway_gets_it_cut_back(prefilled: list[Any], stores: Any) -> None:
    kept(stores(), PROMPT[:400], prefilled)
    cache, n = stores().lookup([*PROMPT[:250], 1, 2, 3]) or (None, 0)
    assert n == 250 and cache is not None and cache[0].offset == 250
    assert stores().lookup([*PROMPT[:MIN - 1], 1, 2]) is None  # too little in common to be worth a read


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_caches_round_trip_and_never_meet_another_bit_width(bits: int, stores: Any) -> None:
    layers = []
    for _ in range(2):
        layer = KVCache()
        rows = mx.random.normal((1, 2, 300, 64))
        layer.update_and_fetch(rows, rows * 2)
        layers.append(layer.to_quantized(group_size=64, bits=bits))
    mx.eval([layer.state for layer in layers])
    kept(stores(kv_bits=bits), PROMPT[:300], layers)
    assert stores(kv_bits=None).lookup([*PROMPT[:300], 1]) is None
    assert stores(kv_bits=12 - bits).lookup([*PROMPT[:300], 1]) is None
    cache, n = stores(kv_bits=bits).lookup([*PROMPT[:300], 1]) or (None, 0)
    assert n == 300 and cache is not None and type(cache[0]) is QuantizedKV  # the engine's batchable class
    assert cache[0].bits == bits
    for got, want in zip(cache, layers, strict=True):
        assert all(mx.array_equal(a, b[..., :300, :]) for a, b in zip(got.keys, want.keys, strict=True))


def test_a_prefix_mostly_on_disk_already_is_not_written_again(prefilled: list[Any], stores: Any) -> None:
    store = stores()
    kept(store, PROMPT[:200], prefilled)
    store.store(PROMPT[:300], prefilled)  # 200 of its 300 tokens are on disk: not worth a write
    store.store(PROMPT[:150], prefilled)  # inside a file already
    store.flush()
    assert store.usage()[1] == 1
    kept(store, PROMPT[:450], prefilled)  # less than half of it is on disk: written
    assert store.usage()[1] == 2


def test_warm_start_reads_the_most_recent_prefixes_within_the_budget(prefilled: list[Any], stores: Any) -> None:
    store = stores()
    a = kept(store, PROMPT[:200], prefilled)
    b = kept(store, [*PROMPT[:100], *PROMPT[300:500]], _shifted(prefilled))
    os.utime(a, (1, 1_000))  # `a` used long ago
    fresh = stores()
    budget = b.stat().st_size + 100
    warmed = fresh.warm(4, budget)
    assert [len(tokens) for tokens, _ in warmed] == [300]  # `b` alone fits the budget
    memory = PrefixCache(1 << 30, lower=stores())
    memory.warm()
    assert memory.stats().memory.entries == 2  # both, most recent last


def _shifted(prefilled: list[Any]) -> list[Any]:
    """A cache of 300 tokens (values need not match: only its file is read here)."""
    out = copy.deepcopy(prefilled)
    for layer in out:
        layer.trim(300)
    return out


def _rewrite_metadata(path: Path, **changes: str) -> None:
    """Edit a safetensors header in place of the original file (same arrays)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"].update({f"0.{k}": v for k, v in changes.items()})
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


BREAKAGES = {
    "corrupted": (_flip_a_byte, "checksum"),
    "truncated": (_truncate, "unreadable"),
    "other MLX": (lambda p: _rewrite_metadata(p, mlx="0.0.1"), "written by MLX 0.0.1"),
    "renamed": (lambda p: p.rename(p.with_name("0" * 40 + ".safetensors")), "name does not match"),
    "not ours": (lambda p: _rewrite_metadata(p, pensieve_prefix="99"), "not a prefix file"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_bad_file_is_discarded_with_a_warning_and_the_prompt_is_prefilled(
    breakage: str, prefilled: list[Any], stores: Any, warnings_logged: list[str]
) -> None:
    path = kept(stores(), PROMPT[:300], prefilled)
    damage, reason = BREAKAGES[breakage]
    damage(path)
    restarted = stores()
    assert restarted.lookup([*PROMPT[:300], 1]) is None
    assert any("discarding" in w and reason in w for w in warnings_logged), warnings_logged
    assert not list(restarted.directory.glob("*.safetensors"))  # gone, for every server


def test_another_models_file_is_never_used_and_stays_for_its_model(prefilled: list[Any], stores: Any) -> None:
    path = kept(stores(model="other"), PROMPT[:300], prefilled)
    assert stores(model="tiny").lookup([*PROMPT[:300], 1]) is None
    assert path.is_file() and stores(model="other").lookup([*PROMPT[:300], 1]) is not None


def test_the_folder_stays_within_its_bound_least_recently_used_first(prefilled: list[Any], stores: Any) -> None:
    probe = stores()
    one = kept(probe, PROMPT[:150], prefilled)
    size = one.stat().st_size
    store = stores(max_bytes=int(size * 2.5))
    two = kept(store, PROMPT[300:450], _shifted(prefilled))
    os.utime(one, (1, 1_000))
    os.utime(two, (1, 2_000))
    assert store.lookup([*PROMPT[:150], 9]) is not None  # `one` is used: now the most recent
    three = kept(store, PROMPT[100:250], _shifted(prefilled))
    assert one.is_file() and three.is_file() and not two.exists()
    assert sum(p.stat().st_size for p in store.directory.glob("*.safetensors")) <= store.max_bytes


def test_a_full_disk_is_a_warning_and_the_next_write_works(
    prefilled: list[Any], stores: Any, warnings_logged: list[str]
) -> None:
    store = stores()
    for n in range(1024):  # the writer's next temporary files (`.<pid>-<n>.tmp`) lead to /dev/full
        name = store.directory / f".{os.getpid()}-{n}.tmp"
        if not name.exists():
            name.symlink_to("/dev/full")
    store.store(PROMPT[:300], prefilled)
    store.flush()
    assert any("could not write 300 tokens" in w and "No space left on device" in w for w in warnings_logged)
    assert not list(store.directory.glob("*.safetensors"))
    for link in store.directory.glob(".*.tmp"):
        link.unlink()
    kept(store, PROMPT[:300], prefilled)


def test_a_folder_that_cannot_be_made_leaves_memory_alone_with_a_warning(tmp_path: Path, warnings_logged: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert DiskPrefixStore.open(DiskTier(blocker / "prefixes", 1 << 30, "tiny"), [KVCache()], "tiny") is None
    assert any("cannot use" in w and "kept in memory only" in w for w in warnings_logged)
