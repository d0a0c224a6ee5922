"""`pensieve bench`: measure Pensieve against mlx-lm's server, or profile a running server."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--model", default="embedded", show_default=True,
              help="embedded, synthetic:PRESET[:BITS] (tiny-llama, phi3-mini) or a model folder.")
@click.option("--quick", is_flag=True, help="A tiny run that only proves the benchmark works.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write raw figures.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep the prepared model for reuse.")
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path), help="Tokenizer for synthetic models.")
@click.option("--profile", is_flag=True, help="Instead: show the phase timings of a running server's recent requests.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The running server, for --profile.")
@click.option("--api-key", envvar="PENSIEVE_API_KEY", default="pensieve-local-key", help="Key for --profile.")
def bench(model: str, quick: bool, json_out: Path | None, workdir: Path | None, tokenizer: Path | None,
          profile: bool, url: str, api_key: str) -> None:
    """Benchmark Pensieve against mlx_lm.server on the same model (see docs/benchmarks.md)."""
    if profile:
        from pensieve.cli.bench.profile import profile_table, recent_profiles

        try:
            requests = recent_profiles(url, api_key)
        except OSError as exc:
            raise click.ClickException(f"cannot read {url}/v1/debug/requests ({exc}); is the server running?") from None
        if not requests:
            raise click.ClickException("no finished generations yet: send a request, then run this again")
        click.echo(profile_table(requests))
        return
    from pensieve.cli.bench.compare import run_comparison

    click.echo(run_comparison(model, quick=quick, json_out=json_out, workdir=workdir, tokenizer=tokenizer))
