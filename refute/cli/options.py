"""Options and small parsers the commands share: the backend, the seed, token lists, amounts of
wei, the prover/watcher process options, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click
from tqdm import tqdm


def _seed(f: Callable, help: str) -> Callable:
    def check(_ctx: click.Context, _param: click.Parameter, value: int) -> int:
        if not 0 <= value < 2**256:
            raise click.BadParameter("the seed must be an integer in [0, 2^256)")
        return value

    return click.option(
        "--seed", default=0, show_default=True, type=int, callback=check, help=help
    )(f)


def seed_option(f: Callable) -> Callable:
    """--seed: an integer in [0, 2^256) (the range said once, not printed in full)."""
    return _seed(f, "sampling seed, an integer in [0, 2^256)")


def request_defaults(max_new_tokens: int) -> Callable:
    """--max-new-tokens, --temperature and --seed of a prover: what a request it serves gets
    where it names none (`refute prove` and `refute serve`)."""

    def apply(f: Callable) -> Callable:
        f = _seed(f, "seed of a request that names none, an integer in [0, 2^256)")
        f = click.option(
            "--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0),
            help="temperature of a request that names none (0: greedy)",
        )(f)  # fmt: skip
        return click.option(
            "--max-new-tokens", default=max_new_tokens, show_default=True,
            type=click.IntRange(min=1), help="tokens to generate for a request that names none",
        )(f)  # fmt: skip

    return apply


def drill_syntax(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed drill target before the chain is touched (the model check follows)."""
    from refute.bisection.drills import DrillError, split_target

    if value is not None:
        try:
            split_target(value)
        except DrillError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def prover_drill_options(cheat_help: str) -> Callable:
    """--watch (a watcher in the prover's process) and the --cheat drill of a prover."""

    def apply(f: Callable) -> Callable:
        f = click.option(
            "--cheat", default=None, metavar="POSITION,NODE,ELEMENT", callback=drill_syntax,
            help=cheat_help,
        )(f)  # fmt: skip
        return click.option(
            "--watch", "also_watch", is_flag=True,
            help="also watch every claim on the game, as `refute watch` does",
        )(f)  # fmt: skip

    return apply


def progress_bar(**kwargs: object) -> tqdm:
    """A progress bar on stderr when it is a terminal, nothing otherwise."""
    return tqdm(file=sys.stderr, disable=kwargs.pop("disable", False) or not sys.stderr.isatty(),
                **kwargs)  # fmt: skip


backend_option = click.option(
    "--backend",
    "backend_name",
    type=click.Choice(["reference", "cpu", "triton"]),
    default=None,
    help="arithmetic backend (default: the fastest available here); all give the same bits",
)


def _parse_tokens(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated token ids, got {text!r}") from exc


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _announce_compiles(backend: object) -> None:
    """Have a backend that compiles kernels (the cpu one, without an on-disk cache yet) say so
    on stderr before it does: a first run on a machine takes seconds longer."""
    if hasattr(backend, "on_compile"):
        from refute.kernels.cpu.backend import COMPILE_NOTICE

        backend.on_compile = lambda: tqdm.write(COMPILE_NOTICE, file=sys.stderr)


UNITS = {"wei": 0, "gwei": 9, "szabo": 12, "finney": 15, "ether": 18, "eth": 18}


def parse_amount(text: str, option: str) -> int:
    """An amount of wei: plain (`1000`, `1e18`) or with a unit (`1ether`, `0.05ether`,
    `20gwei`); it must come to a whole number of wei."""
    raw = text.strip().lower()
    unit = next((u for u in sorted(UNITS, key=len, reverse=True) if raw.endswith(u)), "wei")
    number = raw[: len(raw) - len(unit)] if raw.endswith(unit) else raw
    try:
        value = Decimal(number.strip()) * (Decimal(10) ** UNITS[unit])
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not an amount (e.g. 1ether, 20gwei, 1e18)",
                                 param_hint=option) from None  # fmt: skip
    if value < 0 or value != value.to_integral_value():
        raise click.BadParameter(f"{text!r} is not a whole number of wei", param_hint=option)
    return int(value)


def _bonds(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3:
        raise click.BadParameter(
            f"expected three amounts (claim, challenge, move), got {text!r}", param_hint="--bonds"
        )
    return tuple(parse_amount(p, "--bonds") for p in parts)  # type: ignore[return-value]


DEFAULT_ACCOUNT = {"prover": 1, "watcher": 2}


def _service_options(role: str) -> Callable:
    """The options `refute prove` and `refute watch` share."""
    options = [
        click.option(
            "--rpc",
            "rpc_url",
            default=None,
            envvar=["REFUTE_RPC_URL", "ETH_RPC_URL"],
            show_envvar=True,
            help="JSON-RPC URL of a node (host:port is taken as http://; default: an "
            "embedded py-evm chain, private to this process)",
        ),
        click.option(
            "--rpc-timeout",
            default=10.0,
            show_default=True,
            type=click.FloatRange(min=0.1),
            help="seconds one JSON-RPC request may take before it counts as a node error "
            "(retried with backoff)",
        ),
        click.option(
            "--game",
            "game_address",
            default=None,
            help="address of a deployed DisputeGame (default: the one in the state "
            "directory's deployment.json, else deploy a new one)",
        ),
        click.option(
            "--model",
            "model_ref",
            default=None,
            help="built-in model (tiny-llama, tiny-gpt2) or checkpoint directory "
            "(default: the shipped demo checkpoint)",
        ),
        click.option(
            "--state",
            "state_dir",
            default=None,
            type=click.Path(file_okay=False, path_type=Path),
            help=f"state directory, kept across restarts (default with --rpc: "
            f"refute-state/{role}; embedded: a new temporary directory)",
        ),
        click.option(
            "--account",
            default=str(DEFAULT_ACCOUNT[role]),
            show_default=True,
            help="an unlocked account of the node: its index or address",
        ),
        click.option(
            "--key-env",
            default=None,
            metavar="VAR",
            help="sign locally with the private key held in environment variable VAR "
            "(instead of an unlocked account)",
        ),
        click.option(
            "--interval",
            default=2.0,
            show_default=True,
            type=click.FloatRange(min=0.05),
            help="seconds between polls when idle",
        ),
        click.option(
            "--max-seconds", default=None, type=click.FloatRange(min=0), help="exit after this long"
        ),
        click.option(
            "--until-idle",
            is_flag=True,
            help="exit once no request, pending claim or active dispute is left",
        ),
        click.option(
            "--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True
        ),
        click.option(
            "--log-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="append the event log here (default: stdout)",
        ),
        click.option(
            "--window",
            default=3600,
            show_default=True,
            type=click.IntRange(min=1),
            help="challenge window W in seconds (when deploying)",
        ),
        click.option(
            "--clock",
            default=1800,
            show_default=True,
            type=click.IntRange(min=1),
            help="each side's chess clock C in seconds (when deploying)",
        ),
        click.option(
            "--extension",
            default=120,
            show_default=True,
            type=click.IntRange(min=0),
            help="clock extension E in seconds, <= C (when deploying)",
        ),
        click.option(
            "--bonds",
            default="1ether,0.5ether,0.001ether",
            show_default=True,
            help="claim, challenge and move bonds (when deploying): amounts in wei or with a "
            "unit (1ether, 0.05ether, 20gwei, 1e18)",
        ),
        click.option(
            "--fee",
            default="10000gwei",
            show_default=True,
            help="claim fee per position, paid to the deployer (the watchers' fund), when "
            "deploying: an amount as in --bonds",
        ),
        click.option(
            "--deploy",
            is_flag=True,
            help="deploy a new game when none is given or saved (`prove` does so without it; "
            "`watch --rpc` refuses to watch an empty game of its own unless told)",
        ),
        click.option("-q", "--quiet", is_flag=True, help="log only warnings and errors"),
        click.option("-v", "--verbose", is_flag=True, help="also log every polling round"),
        click.option(
            "--confirmations",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="act on events only this many blocks deep (set it on a live network; a reorg "
            "of what was acted on is undone and re-sent either way)",
        ),
        click.option(
            "--workers",
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="model-work threads (generations, re-executions), apart from the game loop",
        ),
        click.option(
            "--ray",
            "ray_address",
            default=None,
            metavar="ADDRESS",
            help="run model work on the actors of a Ray cluster at ADDRESS ('auto': the local "
            "one, started if none runs; needs the extra refute[ray]); the game loop, chain "
            "follower and state stay in this process",
        ),
        click.option(
            "--ray-actors",
            default=None,
            type=click.IntRange(min=1),
            help="Ray actors, each loading the model once (default: one per GPU of the "
            "cluster, else one per CPU)",
        ),
        click.option(
            "--metrics-port",
            default=0,
            type=click.IntRange(min=0, max=65535),
            help="serve /health and Prometheus /metrics on 127.0.0.1 at this port (default: a "
            "free port, named in the `metrics` event)",
        ),
        click.option("--no-metrics", is_flag=True, help="serve no /health or /metrics"),
        backend_option,
    ]

    def wrap(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return wrap
