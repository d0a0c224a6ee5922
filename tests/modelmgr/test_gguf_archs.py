"""Each GGUF architecture and tensor type, checked by logits against the model it was made from.

The files are written by llama.cpp's own Python writer (`gguf`) from random-weight mlx-lm models;
the reference is the float32 mlx-lm model holding the dequantized weights, so any difference is
the loader's (names, q/k permutation, fused tensors, biases, quantization settings), not the
quantization's.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from pensieve.modelmgr.gguf import load_gguf
from tests.modelmgr.gguf_files import SHAPES, T, expected_model, random_model, write_gguf

TOKENS = mx.array([[1, 520, 9531, 300, 12, 7000, 45, 2]])
VOCAB = 49152  # the embedded tokenizer's, written into every file
CASES = [(shape, t) for shape in SHAPES for t in (T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1)]
CASES.append(("llama", T.BF16))  # MLX expands BF16 (like Q4_K, Q6_K) to float16


@pytest.mark.parametrize(("shape", "weight_type"), CASES, ids=[f"{s}-{t.name}" for s, t in CASES])
def test_gguf_logits_match_the_source_model(tmp_path: Path, shape: str, weight_type: T) -> None:
    source, config = random_model(shape, VOCAB)
    path = tmp_path / f"{shape}.{weight_type.name}.gguf"
    stored = write_gguf(path, source, config, shape, weight_type)

    model, tokenizer, loaded_config = load_gguf(path)

    expected = np.array(expected_model(shape, config, stored)(TOKENS))
    actual = np.array(model(TOKENS).astype(mx.float32))
    scale = np.abs(expected).max()
    # Packed weights run with float16 scales (and F16/BF16 files in float16): allow for that.
    tolerance = 1e-5 if weight_type == T.F32 else 2e-3
    np.testing.assert_allclose(actual, expected, atol=tolerance * scale, rtol=0)
    if weight_type in (T.Q8_0, T.Q4_0, T.Q4_1):
        bits = 8 if weight_type == T.Q8_0 else 4
        assert loaded_config["quantization"]["bits"] == bits  # kept packed, not expanded
    if weight_type in (T.Q4_0, T.Q4_1):  # 4-bit rounding moves logits far past the tolerance
        assert np.abs(np.array(source(TOKENS)) - expected).max() > 10 * tolerance * scale
    assert loaded_config["model_type"] == ("llama" if shape == "mistral" else shape)
    assert loaded_config["tie_word_embeddings"] == config["tie_word_embeddings"]
    assert tokenizer.encode("Hello world") == [19556, 905]


def test_phi3_longrope_factors_become_rope_scaling(tmp_path: Path) -> None:
    """Phi-3 128k files carry LongRoPE as two factor tensors; mlx-lm wants them in the config."""
    from pensieve.modelmgr.gguf import gguf_model_config, read_gguf_header

    source, config = random_model("phi3", VOCAB)
    path = tmp_path / "phi3.gguf"
    write_gguf(path, source, config, "phi3", T.F32)
    metadata = read_gguf_header(path).metadata
    long, short = mx.arange(1, 9, dtype=mx.float32), mx.ones(8)
    weights = {"rope_factors_long.weight": long, "rope_factors_short.weight": short}
    scaled = gguf_model_config(metadata, weights)
    assert scaled["rope_scaling"] == {
        "type": "longrope",
        "long_factor": long.tolist(),
        "short_factor": short.tolist(),
    }
    import mlx_lm.models.phi3 as phi3

    phi3.Model(phi3.ModelArgs.from_dict({**scaled, "vocab_size": VOCAB}))  # mlx-lm accepts it
