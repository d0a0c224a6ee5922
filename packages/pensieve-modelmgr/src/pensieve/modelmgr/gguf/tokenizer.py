"""Rebuild a GGUF model's tokenizer from its ``tokenizer.ggml.*`` metadata.

A GGUF file carries the whole vocabulary but no tokenizer.json, and the Hugging Face repo it came
from may be unreachable (or never known). The pieces are put back together with the
``tokenizers`` library the way Hugging Face's own tokenizer.json files describe the same models,
so the result works everywhere a normal tokenizer does, including ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import mlx.core as mx
from mlx_lm.tokenizer_utils import (
    BPEStreamingDetokenizer,
    SPMStreamingDetokenizer,
    TokenizerWrapper,
)
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pensieve.modelmgr.gguf.errors import GGUFError

# llama.cpp's token types (tokenizer.ggml.token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4

# Word-splitting rules of the byte-level BPE vocabularies found in llama-family files, keyed by
# llama.cpp's tokenizer.ggml.pre names; the regexes are those of the models' tokenizer.json.
_LLAMA3_NAMES = {"llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "smaug-bpe", "dbrx"}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SINGLE_DIGIT_NAMES = {"smollm", "starcoder", "refact", "command-r", "codeshell"}
_GPT2_NAMES = {"default", "gpt-2"}

# Chat templates end a turn with one of these rather than with the eos token, so generation must
# also stop on them.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


def tokenizer_from_gguf(metadata: Mapping[str, Any]) -> PreTrainedTokenizerFast:
    """Build a Hugging Face fast tokenizer equivalent to the one llama.cpp would use.

    Supports byte-level BPE vocabularies (``gpt2``: Llama 3, SmolLM, Mistral Nemo) and
    SentencePiece BPE vocabularies with scores (``llama``: Llama 2, Mistral 7B, TinyLlama).
    """
    kind = metadata.get("tokenizer.ggml.model")
    tokens: list[str] = list(metadata.get("tokenizer.ggml.tokens", []))
    types = _as_list(metadata.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
    if kind == "gpt2":
        backend = _byte_level_bpe(metadata, tokens)
    elif kind == "llama":
        backend = _sentencepiece_bpe(metadata, tokens, types)
    else:
        raise GGUFError(
            f"GGUF tokenizer type {kind!r} is not supported (only 'gpt2' and 'llama' are). "
            "Use an MLX model of it instead."
        )
    # Both kinds are matched whole before the BPE runs, as llama.cpp does; only control tokens
    # are special, so skip_special_tokens hides them while user-defined words stay visible.
    backend.add_special_tokens(
        [_added(tokens[i], special=True) for i, t in enumerate(types) if t in (_CONTROL, _UNKNOWN)]
    )
    backend.add_tokens(
        [_added(tokens[i], special=False) for i, t in enumerate(types) if t == _USER_DEFINED]
    )

    def token(key: str) -> str | None:
        token_id = _scalar(metadata, f"tokenizer.ggml.{key}_token_id")
        return tokens[token_id] if token_id is not None and token_id < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos"),
        eos_token=token("eos"),
        unk_token=token("unknown"),
        pad_token=token("padding"),
        # llama.cpp adds BOS by default for SentencePiece vocabularies only.
        add_bos_token=bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", kind == "llama")),
        add_eos_token=bool(_scalar(metadata, "tokenizer.ggml.add_eos_token", False)),
        chat_template=metadata.get("tokenizer.chat_template"),
    )


def tokenizer_wrapper_from_gguf(metadata: Mapping[str, Any]) -> TokenizerWrapper:
    """Wrap the GGUF tokenizer for mlx-lm, with every token that should end a reply.

    The GGUF eos token is often the end of a document (``<|endoftext|>``) while chat replies end
    with a turn marker, so generation would run on past the answer without the latter.
    """
    hf_tokenizer = tokenizer_from_gguf(metadata)
    vocab = hf_tokenizer.get_vocab()
    template = hf_tokenizer.chat_template or ""
    stop_ids = {vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab and t in template}
    for key in ("eot", "eom"):
        if (token_id := _scalar(metadata, f"tokenizer.ggml.{key}_token_id")) is not None:
            stop_ids.add(token_id)

    if metadata.get("tokenizer.ggml.model") == "llama":
        trim = bool(_scalar(metadata, "tokenizer.ggml.add_space_prefix", True))
        detokenizer = partial(SPMStreamingDetokenizer, trim_space=trim)
    else:
        detokenizer = BPEStreamingDetokenizer
    return TokenizerWrapper(hf_tokenizer, detokenizer, eos_token_ids=stop_ids)


def _byte_level_bpe(metadata: Mapping[str, Any], tokens: list[str]) -> Tokenizer:
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
    pre = metadata.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _LLAMA3_NAMES or pre == "tekken":
        split = _LLAMA3_SPLIT if pre in _LLAMA3_NAMES else _TEKKEN_SPLIT
        pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level]
        )
    elif pre in _SINGLE_DIGIT_NAMES:
        pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), gpt2]
        )
    elif pre in _GPT2_NAMES:
        pre_tokenizer = gpt2
    else:
        raise GGUFError(
            f"GGUF pre-tokenizer {pre!r} is not supported, so text would be split wrongly. "
            "Use an MLX model of it instead."
        )
    # Llama 3's tokenizer takes any whole word that is in the vocabulary as one token.
    model = models.BPE(_vocab(tokens), merges, ignore_merges=pre in _LLAMA3_NAMES)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(
    metadata: Mapping[str, Any], tokens: list[str], types: Sequence[int]
) -> Tokenizer:
    """Express SentencePiece's score-driven BPE as rank-driven merges, as transformers does.

    SentencePiece merges the adjacent pair whose union has the best score; listing every
    split of every piece, best union first, makes ``tokenizers``' BPE pick the same pair.
    """
    scores = _as_list(metadata.get("tokenizer.ggml.scores", [0.0] * len(tokens)))
    vocab = _vocab(tokens)
    ranked: list[tuple[float, str, str]] = []
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        if kind == _NORMAL:
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in vocab and right in vocab:
                    ranked.append((score, left, right))
    ranked.sort(key=lambda merge: -merge[0])  # stable: equal scores keep vocabulary order
    unk_id = _scalar(metadata, "tokenizer.ggml.unknown_token_id")
    tokenizer = Tokenizer(
        models.BPE(
            vocab,
            [(left, right) for _, left, right in ranked],
            unk_token=tokens[unk_id] if unk_id is not None else None,
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    # Words are marked by "▁"; llama.cpp also puts one before the text unless told otherwise.
    space_prefix = bool(_scalar(metadata, "tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", "▁")
    tokenizer.normalizer = (
        normalizers.Sequence([normalizers.Prepend("▁"), replace]) if space_prefix else replace
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        vocab.setdefault(token, token_id)  # a duplicated piece keeps its first id
    return vocab


def _added(content: str, *, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False)


def _scalar(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = metadata.get(key, default)
    return value.item() if isinstance(value, mx.array) else value


def _as_list(value: mx.array | Sequence[Any]) -> list[Any]:
    return value.tolist() if isinstance(value, mx.array) else list(value)
