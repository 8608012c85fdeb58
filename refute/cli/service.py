"""`refute prove` and `refute watch`: the long-running processes (bisection/service.py).

Both run against the embedded chain (private to the process: it deploys the contracts itself) or
a node given with --rpc, where the first process deploys the game (or is given --game) and
writes `deployment.json` into its state directory; others join with --game ADDRESS. Events go
to stdout (or --log-file) as JSON lines; a status line is drawn on stderr when it is a terminal.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from refute.cli import main
from refute.cli.options import (
    _bonds,
    _parse_tokens,
    _service_options,
    drill_syntax,
    parse_amount,
    prover_drill_options,
    request_defaults,
)


def _account(w3: Any, ref: str, key_env: str | None) -> str:
    """The sending account: a local key (signing middleware) or one of the node's accounts."""
    if key_env is not None:
        from eth_account import Account
        from web3.middleware import SignAndSendRawMiddlewareBuilder

        key = os.environ.get(key_env)
        if not key:
            raise click.UsageError(f"environment variable {key_env} holds no private key")
        try:
            local = Account.from_key(key)
        except (ValueError, TypeError) as exc:
            raise click.UsageError(f"{key_env} does not hold a valid private key") from exc
        w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(local), layer=0)
        w3.eth.default_account = local.address
        return local.address
    accounts = list(w3.eth.accounts)
    if ref.isdigit():
        if int(ref) >= len(accounts):
            raise click.BadParameter(
                f"the node has {len(accounts)} unlocked accounts", param_hint="--account"
            )
        return accounts[int(ref)]
    matches = [a for a in accounts if a.lower() == ref.lower()]
    if not matches:
        raise click.BadParameter(
            f"{ref} is not an unlocked account of the node; use --key-env", param_hint="--account"
        )
    return matches[0]


def _open(role: str, opts: dict[str, Any], check: Callable[[Any], None] | None = None):
    """Chain, account, game (joined or deployed), model and log of a service process. `check`
    validates the inputs that need the model before anything is deployed or sent."""
    from refute.bisection.deployment import Deployment
    from refute.bisection.eventlog import EventLog
    from refute.contracts.chain import connect
    from refute.contracts.game import GameClient, GameParams
    from refute.demo_model import DEMO_MODEL_DIR
    from refute.engine.checkpoint import load_model

    rpc = opts["rpc_url"]
    state = opts["state_dir"]
    if state is None:
        state = Path(f"refute-state/{role}") if rpc else Path(tempfile.mkdtemp(prefix="refute-"))
    if rpc is None and (state / "deployment.json").exists():
        raise click.UsageError(
            f"{state} belongs to an earlier chain; an embedded chain starts "
            "empty: give a new --state"
        )
    stream = sys.stdout
    if opts["log_file"]:
        stream = open(opts["log_file"], "a")
        atexit.register(stream.close)
    level = "warning" if opts["quiet"] else "debug" if opts["verbose"] else "info"
    log = EventLog(stream, role, opts["log_format"], level=level)
    model = load_model(opts["model_ref"] or DEMO_MODEL_DIR)
    if check is not None:
        check(model)
    claim, challenge, move = _bonds(opts["bonds"])
    fee = parse_amount(opts["fee"], "--fee")
    if opts["extension"] > opts["clock"]:
        raise click.BadParameter(
            "the extension must not exceed the clock", param_hint="--extension"
        )
    w3 = connect(rpc, timeout=opts["rpc_timeout"])
    account = _account(w3, opts["account"], opts["key_env"])
    saved = state / Deployment.FILE
    address = opts["game_address"]
    if address is None and saved.exists():
        address = Deployment.load(state).game
    if address is None and rpc is not None and role == "watcher" and not opts["deploy"]:
        raise click.UsageError(
            "give --game ADDRESS (the game to watch, from the prover's `deployed` event) or "
            "--deploy to deploy a new, empty game"
        )
    if address is not None:
        game = GameClient.at(w3, address)
        deployment = Deployment.of(game, rpc, 0)
        if saved.exists():
            old = Deployment.load(state)
            if (old.game, old.chain_id) != (deployment.game, deployment.chain_id):
                raise click.UsageError(
                    f"{state} holds the state of game {old.game} on chain "
                    f"{old.chain_id}: give another --state"
                )
            deployment = old
        log(
            "joined",
            game=game.game.address,
            chain_id=deployment.chain_id,
            model=model.name,
            model_root=model.root,
            account=account,
            state=str(state),
        )
    else:
        params = GameParams(
            claim_bond=claim,
            challenge_bond=challenge,
            move_bond=move,
            fee_per_position=fee,
            window=opts["window"],
            clock=opts["clock"],
            extension=opts["extension"],
        )
        block = w3.eth.block_number
        game = GameClient.deploy(w3=w3, params=params, sender=account)
        deployment = Deployment.of(game, rpc, block)
        log(
            "deployed",
            game=game.game.address,
            registry=game.registry.address,
            verifier=game.verifier.address,
            chain_id=deployment.chain_id,
            chain=rpc or "embedded",
            params=params.__dict__,
            state=str(state),
            join=f"refute watch --rpc {rpc} --game {game.game.address}" if rpc else None,
        )
    deployment.save(state)
    return game, model, account, log, state, deployment


def _node_error(exc: Exception) -> bool:
    """Whether `exc` came from the node (a connection, a timeout, an HTTP or JSON-RPC error): before
    the loop runs (connecting, deploying, registering, resuming) it ends the process with a clear
    error instead of a traceback; the loop itself retries them."""
    from web3.exceptions import Web3Exception

    return isinstance(exc, OSError | Web3Exception) and not isinstance(exc, click.ClickException)


def _node_failure(exc: Exception) -> click.ClickException:
    return click.ClickException(
        f"the node failed while starting ({type(exc).__name__}: {str(exc)[:300]}); start again "
        "(the state directory is kept)"
    )


def _worker(opts: dict[str, Any], model: Any = None, drill: str | None = None, share: Any = None):
    """The local pool, or with --ray the actors of a cluster (running the same jobs, with an
    executor of the same model, backend and drill). `share`: the local pool of another client
    of this process, used again (each job carries its client's executor); actors hold one."""
    from refute.bisection.workers import ModelWorker

    if opts.get("ray_address") is None:
        return share if share is not None else ModelWorker(threads=opts["workers"])
    from refute.bisection.ray_worker import RayWorker, connect
    from refute.demo_model import DEMO_MODEL_DIR

    connect(opts["ray_address"])
    return RayWorker(opts["model_ref"] or DEMO_MODEL_DIR, model.root, actors=opts["ray_actors"],
                     backend=opts["backend_name"], drill=drill)  # fmt: skip


def _run(service: Any, opts: dict[str, Any], model: Any, executor: Any) -> None:
    """Resume from the chain, warn if the game's clocks are too short for this machine, serve
    metrics, and poll until stopped."""
    from refute.bisection.eventlog import StatusLine
    from refute.bisection.liveness import check_liveness
    from refute.bisection.metrics import HealthServer, Metrics
    from refute.bisection.service import stop_on_signals
    from refute.bisection.store import StoreError

    stop = threading.Event()
    restore = stop_on_signals(stop)
    status = StatusLine()
    service.status = status
    server = None
    try:
        try:
            service.resume()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        for warning in check_liveness(model, executor, service.game.params()):
            service.log("liveness", **warning)
        if not opts["no_metrics"]:
            service.metrics = Metrics()
            server = HealthServer(service.metrics, port=opts["metrics_port"]).start()
            service.log("metrics", url=server.url, health=server.url + "/health",
                        metrics=server.url + "/metrics")  # fmt: skip
        try:
            service.run(stop, max_seconds=opts["max_seconds"], until_idle=opts["until_idle"])
        except StoreError as exc:
            service.log("error", error="StoreError", detail=str(exc))
            raise click.ClickException(str(exc)) from None
    finally:
        if server is not None:
            server.close()
        status.close()
        restore()
        for worker in {id(c.worker): c.worker for c in service.clients}.values():
            worker.close()  # Ray actors end with the process that made them, or here


def _drill(parse: Callable, text: str | None, model: Any, option: str) -> Any:
    """The tamper hook of a --cheat / --lie drill, validated against the model's program."""
    from refute.bisection.drills import DrillError

    if text is None:
        return None
    try:
        return parse(text, model)
    except DrillError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _executor(model: Any, opts: dict[str, Any], tamper: Any = None):
    from refute.engine import backends
    from refute.engine.executor import Executor

    return Executor(model, backend=backends.make(opts["backend_name"]), tamper=tamper)


@main.command()
@_service_options("prover")
@click.option("--prompt", "prompts", multiple=True, help="claim a completion of this text")
@click.option(
    "--prompt-tokens",
    "token_prompts",
    multiple=True,
    help="claim a completion of these comma-separated token ids",
)
@click.option(
    "--requests",
    "requests_path",
    default=None,
    help="JSON-lines file of requests to serve, followed as it grows ('-': stdin); "
    'each {"prompt": text} or {"tokens": [ids]}, optionally with max_new_tokens, '
    "temperature, seed",
)
@request_defaults(max_new_tokens=8)
@prover_drill_options(
    "a drill: claim traces in which this one element is wrong (its lowest bit flipped; "
    "NODE a node name such as layers.1.mlp.down, or its id), so that watchers dispute them "
    "and win; the claim bond is lost"
)
@click.option(
    "--oracle",
    "oracle_address",
    default=None,
    metavar="ADDRESS",
    help="also serve the requests of the InferenceOracle at ADDRESS for the model: answer each "
    "with a claim and deliver the output once it is final (bisection/oracle_client.py)",
)
def prove(
    prompts,
    token_prompts,
    requests_path,
    max_new_tokens,
    temperature,
    seed,
    also_watch,
    cheat,
    oracle_address,
    **opts,
) -> None:
    """Serve inference requests as claims on a chain and defend them: run each request, post its
    claim with the claim bond, answer every dispute opened against it from the trace (recomputed
    from checkpoints), finalise it after the window and withdraw what it is owed."""
    from refute.bisection.challenger import Challenger
    from refute.bisection.drills import parse_cheat
    from refute.bisection.prover import Prover
    from refute.bisection.requests import FixedRequests, RequestError, RequestFile, StreamRequests
    from refute.bisection.service import Service
    from refute.engine.executor import Request
    from refute.errors import RefuteError

    sources: list[Any] = []
    try:
        if requests_path not in (None, "-") and not Path(requests_path).is_file():
            raise click.BadParameter(f"{requests_path} is not a file", param_hint="--requests")
        game, model, account, log, state, deployment = _open(
            "prover", opts, check=lambda m: _drill(parse_cheat, cheat, m, "--cheat")
        )
        hook = _drill(parse_cheat, cheat, model, "--cheat")
        game.register(model, sender=account)
        worker = _worker(opts, model, cheat)
        serving: dict[str, Any] = {}
        if oracle_address is not None:
            from refute.bisection.oracle_client import OracleProver
            from refute.contracts.oracle import OracleClient

            serving = {"oracle": OracleClient.at(game, oracle_address)}
        prover = (OracleProver if serving else Prover)(
            game,
            model,
            state / "prover",
            account,
            executor=_executor(model, opts, hook),
            consistent_lies=hook is not None,
            worker=worker,
            confirmations=opts["confirmations"],
            **serving,
        )
        clients = [prover]
        if also_watch:
            watcher = Challenger(
                game,
                model,
                state / "watcher",
                account,
                executor=prover.executor if hook is None else _executor(model, opts),
                worker=worker if hook is None else _worker(opts, model, share=worker),
                confirmations=opts["confirmations"],
            )
            if watcher.store["cursor"] == 0:
                watcher.store["cursor"] = deployment.block
            clients.append(watcher)
        given = [{"prompt": text} for text in prompts]
        given += [{"tokens": list(_parse_tokens(ids))} for ids in token_prompts]
        if given:
            sources.append(FixedRequests(given))
        if requests_path == "-":
            sources.append(StreamRequests(sys.stdin))
        elif requests_path is not None:
            offset = prover.store.get("offsets", {}).get(requests_path, 0)
            try:
                sources.append(RequestFile(requests_path, offset))
            except RequestError as exc:
                raise click.BadParameter(str(exc), param_hint="--requests") from None
        defaults = Request((), max_new_tokens, temperature, seed)
        service = Service(game, clients, log, sources=sources, defaults=defaults,
                          interval=opts["interval"])  # fmt: skip
        _run(service, opts, model, prover.executor)
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        if not _node_error(exc):
            raise
        raise _node_failure(exc) from exc
    finally:
        for source in sources:
            source.close()


@main.command()
@_service_options("watcher")
@click.option(
    "--from-block",
    default=None,
    type=click.IntRange(min=0),
    help="first block to read claims from (default: where the game was deployed)",
)
@click.option(
    "--lie",
    default=None,
    metavar="POSITION,NODE,ELEMENT",
    callback=drill_syntax,
    help="a drill: a dishonest watcher, re-executing with this one element wrong (as "
    "prove --cheat), so that it disputes honest claims and loses its challenge bond",
)
def watch(from_block, lie, **opts) -> None:
    """Follow the claims posted on a game, re-execute each with the model it names, challenge
    mismatches (or prove a wrong token directly) and play every dispute to the end."""
    from refute.bisection.challenger import Challenger
    from refute.bisection.drills import parse_lie
    from refute.bisection.service import Service
    from refute.errors import RefuteError

    try:
        game, model, account, log, state, deployment = _open(
            "watcher", opts, check=lambda m: _drill(parse_lie, lie, m, "--lie")
        )
        if opts["rpc_url"] is None:
            log(
                "warning",
                detail="the embedded chain is private to this process: only claims "
                "posted here can be seen; use --rpc to follow a shared chain",
            )
        hook = _drill(parse_lie, lie, model, "--lie")
        watcher = Challenger(
            game,
            model,
            state / "watcher",
            account,
            executor=_executor(model, opts, hook),
            consistent_lies=hook is not None,
            worker=_worker(opts, model, lie),
            confirmations=opts["confirmations"],
        )
        if from_block is not None:
            watcher.store["cursor"] = from_block
        elif watcher.store["cursor"] == 0:
            watcher.store["cursor"] = deployment.block
        watcher.store.save()
        _run(Service(game, [watcher], log, interval=opts["interval"]), opts, model,
             watcher.executor)  # fmt: skip
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        if not _node_error(exc):
            raise
        raise _node_failure(exc) from exc
