"""`python -m pensieve.cli` runs the `pensieve` command (used by --background re-exec and tests)."""

from pensieve.cli.main import cli

cli()
