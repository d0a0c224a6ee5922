"""`pensieve config init`'s template: valid TOML, every key documented, defaults round-trip."""

from __future__ import annotations

import re
from pathlib import Path

import tomlkit

from pensieve.utils import Settings, load_settings
from pensieve.utils.config_template import SECTIONS, render_config_template
from pensieve.utils.settings import all_keys

_COMMENTED_KEY = re.compile(r"^# ([a-z_]+) = (.*?)(\s+# (example|not set by default))?$")


def test_template_parses_to_the_defaults(tmp_path: Path) -> None:
    text = render_config_template()
    doc = tomlkit.parse(text)
    assert list(doc) == list(SECTIONS)
    path = tmp_path / "pensieve.toml"
    path.write_text(text)
    loaded = load_settings(path, env={})
    assert loaded.flat(redact=False) == Settings().flat(redact=False)


def test_every_key_appears_with_a_description() -> None:
    text = render_config_template()
    section = None
    documented: set[str] = set()
    previous = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif (match := _COMMENTED_KEY.match(line)) and section:
            documented.add(f"{section}.{match.group(1)}")
            assert previous.startswith("#"), f"{section}.{match.group(1)} has no description"
        elif line.startswith("# ") and " is not set by default" in line and section:
            documented.add(f"{section}.{line[2:].split()[0]}")
        previous = line
    wanted = {k for k in all_keys() if k.partition(".")[0] in SECTIONS}
    assert wanted <= documented


def test_uncommenting_defaults_and_examples_gives_valid_settings(tmp_path: Path) -> None:
    """Each commented line is valid TOML once uncommented: first the defaults, then the examples."""
    text = render_config_template()
    for wanted in ("default", "example"):
        lines = []
        for line in text.splitlines():
            match = _COMMENTED_KEY.match(line)
            is_example = bool(match and match.group(4))
            if match and (is_example == (wanted == "example")):
                lines.append(line[2:])
            else:
                lines.append(line)
        path = tmp_path / f"{wanted}.toml"
        path.write_text("\n".join(lines) + "\n")
        loaded = load_settings(path, env={})
        if wanted == "default":
            assert loaded.flat(redact=False) == Settings().flat(redact=False)
            assert all(src.startswith(str(path)) for key, src in loaded.sources().items() if loaded.get(key) is not None)
        else:
            assert loaded.model.aliases == {"claude-*": "smollm2-135m-instruct"}
            assert loaded.model.context_length == 4096
