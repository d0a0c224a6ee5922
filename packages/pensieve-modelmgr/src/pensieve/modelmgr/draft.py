"""The draft model of speculative decoding (`model.draft`), loaded next to the default model.

A draft proposes token ids that the default model checks, so both must mean the same thing by
every id: the same tokenizer. That is checked when the pair is loaded, and a draft of another
family is refused with what differs, before it can silently propose nonsense (it would never
be accepted, and only cost time).
"""

from __future__ import annotations

from typing import Any

from pensieve.modelmgr.facts import ModelFacts
from pensieve.modelmgr.loader import LoadedModel, check_source
from pensieve.modelmgr.sources import ModelSource, resolve_source
from pensieve.modelmgr.store import ModelStore
from pensieve.utils import ModelLoadError, Settings

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


def draft_source(settings: Settings, store: ModelStore) -> ModelSource | None:
    """Where `model.draft` points (a store name, the embedded model, or a path), if set."""
    spec = settings.model.draft
    if not spec:
        return None
    return resolve_source(spec, store, allow_paths=True)


def check_draft(source: ModelSource) -> ModelFacts:
    """The draft's facts from its headers, or a ModelLoadError that says it is the draft."""
    try:
        return check_source(source)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model.draft: {exc.message}; fix it or unset model.draft") from exc


def tokenizer_mismatch(model: Any, draft: Any) -> str | None:
    """How two tokenizers differ (vocabulary, end tokens, special tokens), or None if they agree."""
    vocab, theirs = model.get_vocab(), draft.get_vocab()
    if vocab != theirs:
        if len(vocab) != len(theirs):
            return f"its vocabulary has {len(theirs)} tokens, the model's {len(vocab)}"
        token = min(t for t in vocab.keys() | theirs.keys() if vocab.get(t) != theirs.get(t))
        return f"token {token!r} is id {theirs.get(token)} in the draft and {vocab.get(token)} in the model"
    if set(model.eos_token_ids) != set(draft.eos_token_ids):
        return f"its end-of-sequence ids are {sorted(draft.eos_token_ids)}, the model's {sorted(model.eos_token_ids)}"
    for name in _SPECIAL:
        ours, other = getattr(model, name, None), getattr(draft, name, None)
        if ours != other:
            return f"its {name} is {other!r}, the model's {ours!r}"
    return None


def check_pair(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft that does not share the target's tokenizer, saying what differs."""
    reason = tokenizer_mismatch(target.tokenizer, draft.tokenizer)
    if reason is not None:
        raise ModelLoadError(
            f"draft model '{draft.source.name}' does not share the tokenizer of '{target.source.name}': "
            f"{reason}. Choose a draft of the same model family (the same tokenizer), or unset model.draft"
        )


def target_vocab(target: LoadedModel) -> int:
    """Token ids the target can take (a draft with a larger, padded output never proposes beyond)."""
    config = target.config.get("text_config", target.config)
    return int(config.get("vocab_size") or len(target.tokenizer.get_vocab()))
