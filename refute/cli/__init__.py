"""The `refute` command line: one module per command group, the options they share in
`options.py`.

    run.py      run, verify-trace, verify-step, conformance: one inference and its checks
    demo.py     demo: the whole protocol on an embedded chain
    service.py  prove, watch: the long-running prover and watcher processes
    serve.py    serve, check: the OpenAI-compatible prover and checking its answers
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refute")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="REFUTE_CONFIG",
    default=None,
    help="TOML file of option defaults, a table per command ([prove] window = 600, rpc = "
    '"http://..."; keys are the long option names); options given on the command line win',
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """refute: optimistic fraud proofs for machine-learning inference."""
    if config is not None:
        ctx.default_map = config_defaults(config, ctx.command)


def config_defaults(path: Path, group: click.Group) -> dict[str, dict[str, object]]:
    """The default map of a TOML config file: its tables are commands, its keys long option
    names (without dashes: `max-new-tokens` or `max_new_tokens`). Anything unknown is an error
    naming it, not ignored."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    out: dict[str, dict[str, object]] = {}
    for name, table in data.items():
        command = group.commands.get(name)
        if command is None or not isinstance(table, dict):
            raise click.BadParameter(
                f"{path}: [{name}] is not a command "
                f"(commands: {', '.join(sorted(group.commands))})",
                param_hint="--config",
            )
        by_flag = {
            o.lstrip("-"): p.name for p in command.params for o in p.opts if o.startswith("--")
        }
        out[name] = {}
        for key, value in table.items():
            flag = key.replace("_", "-")
            if flag not in by_flag:
                raise click.BadParameter(
                    f"{path}: [{name}] has no option {key!r}", param_hint="--config"
                )
            out[name][by_flag[flag]] = value
    return out


# the command groups register themselves on `main`
from refute.cli import demo, run, serve, service  # noqa: E402, F401
