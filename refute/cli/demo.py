"""`refute demo`: the whole protocol on an embedded chain (bisection/demo.py)."""

from __future__ import annotations

import json
import sys

import click

from refute.cli import main
from refute.cli.options import seed_option


@main.command()
@click.option("--max-new-tokens", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0))
@seed_option
@click.option(
    "--tamper-node",
    default=None,
    help="node (name or id) whose output the cheating prover flips one bit of "
    "(default: the last layer's MLP down projection)",
)
@click.option(
    "--state",
    "--state-dir",
    "state_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="the clients' state directories go here (default: a temporary directory)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead")
def demo(
    max_new_tokens: int,
    temperature: float,
    seed: int,
    tamper_node: str | None,
    state_dir: str | None,
    as_json: bool,
) -> None:
    """Play the whole protocol on an embedded chain: an honest claim finalises, a cheating claim
    (one flipped bit deep in its trace) is disputed by a watcher and overturned, bonds are paid."""
    from refute.bisection.demo import render, run_demo
    from refute.errors import RefuteError

    def progress(message: str) -> None:
        click.echo(f"[demo] {message}", err=True)

    try:
        out = run_demo(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            tamper_node=tamper_node,
            state_dir=state_dir,
            progress=progress,
        )
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(render(out))
    ok = [c["status"] for c in out["claims"]] == ["finalized", "overturned"]
    sys.exit(0 if ok else 1)
