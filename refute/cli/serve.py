"""`refute serve` (the prover behind an OpenAI-compatible HTTP API, refute/server.py) and
`refute check` (an answer against the chain, refute/check.py).

`serve` takes every option of `refute prove` that concerns the chain, the game, the model and the
state (they mean the same: it is the same prover and the same game loop), plus --host/--port
(loopback by default) and --max-queue. The game loop runs in the main thread (signals end it
after a round, as for `prove`); uvicorn in a second thread (refute/server.py says why).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from refute.cli import main
from refute.cli.options import _service_options, prover_drill_options, request_defaults
from refute.cli.service import _drill, _open, _worker

DEFAULT_MAX_QUEUE = 64
"""Requests waiting for their claims beyond which `refute serve` answers 429 (--max-queue)."""


@dataclass
class Serving:
    """A running `refute serve`: the game loop (not yet started: `loop()` runs it in the
    calling thread, `start()` in a new one) and the HTTP server (started)."""

    service: Any
    api: Any
    http: Any
    stop: Any
    prover: Any
    game: Any
    deployment: Any
    health: Any = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.http.url

    def loop(self, max_seconds: float | None = None, until_idle: bool = False) -> None:
        from refute.bisection.store import StoreError

        try:
            self.service.run(self.stop, max_seconds=max_seconds, until_idle=until_idle)
        except StoreError as exc:
            self.service.log("error", error="StoreError", detail=str(exc))
            raise click.ClickException(str(exc)) from None

    def start(self) -> Serving:
        """The game loop in a daemon thread (tests and benchmarks: no signal handlers)."""
        self.thread = threading.Thread(target=self.loop, name="refute-loop", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop the loop after its round, answer the requests still waiting with 503, stop
        the HTTP server."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        self.api.inbox.close()
        self.http.close()
        if self.health is not None:
            self.health.close()
        self.prover.worker.close()


def _model_id(ref: str | None, model: Any, name: str | None) -> str:
    if name:
        return name
    if ref is None:
        return "demo"
    path = Path(ref)
    return path.resolve().name if path.is_dir() else ref


def launch(params: dict[str, Any]) -> Serving:
    """Everything `refute serve` starts, from its parsed options: the socket is bound first (a
    taken port is named before anything is deployed), then the chain, game, model, prover (and
    watcher), the resumed state and the HTTP server."""
    from refute.bisection.challenger import Challenger
    from refute.bisection.drills import parse_cheat
    from refute.bisection.liveness import check_liveness
    from refute.bisection.metrics import HealthServer, Metrics
    from refute.bisection.service import Service
    from refute.bisection.store import StoreError
    from refute.engine import backends
    from refute.engine.executor import Executor, Request
    from refute.errors import RefuteError
    from refute.server import Api, HttpServer, ServingProver, StreamingExecutor, Wakeup, bind

    opts = dict(params)
    host, port = opts.pop("host"), opts.pop("port")
    max_queue, name = opts.pop("max_queue"), opts.pop("served_model_name")
    defaults = Request((), opts.pop("max_new_tokens"), opts.pop("temperature"), opts.pop("seed"))
    also_watch, cheat = opts.pop("also_watch"), opts.pop("cheat")
    try:
        sock = bind(host, port)
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        game, model, account, log, state, deployment = _open("prover", opts)
        hook = _drill(parse_cheat, cheat, model, "--cheat")
        game.register(model, sender=account)
        worker = _worker(opts, model, cheat)
        backend = backends.make(opts["backend_name"])
        executor = StreamingExecutor(model, backend=backend, tamper=hook)
        prover = ServingProver(
            game,
            model,
            state / "prover",
            account,
            executor=executor,
            consistent_lies=hook is not None,
            worker=worker,
            confirmations=opts["confirmations"],
        )
        clients: list[Any] = [prover]
        if also_watch:
            honest = executor if hook is None else Executor(model, backend=backend)
            watcher = Challenger(
                game,
                model,
                state / "watcher",
                account,
                executor=honest,
                worker=worker if hook is None else _worker(opts, model, share=worker),
                confirmations=opts["confirmations"],
            )
            if watcher.store["cursor"] == 0:
                watcher.store["cursor"] = deployment.block
            clients.append(watcher)
        stop = Wakeup()
        metrics = None if opts["no_metrics"] else Metrics()
        api = Api(
            prover,
            game,
            deployment,
            model_id=_model_id(opts["model_ref"], model, name),
            wake=stop.wake,
            defaults=defaults,
            max_queue=max_queue,
            metrics=metrics,
            log=log,
        )
        service = Service(
            game,
            clients,
            log,
            sources=[api.inbox],
            defaults=defaults,
            interval=opts["interval"],
            metrics=metrics,
        )
        try:
            service.resume()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        for warning in check_liveness(model, executor, game.params()):
            log("liveness", **warning)
        health = None
        if metrics is not None and opts["metrics_port"]:
            health = HealthServer(metrics, port=opts["metrics_port"]).start()
        http = HttpServer(api.app, sock).start()
    except RefuteError as exc:
        sock.close()
        raise click.ClickException(str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    url = http.url
    log(
        "serving",
        url=url,
        model=api.model_id,
        model_root=api.model_root,
        chat_template=api.template is not None,
        max_queue=max_queue,
        completions=url + "/v1/completions",
        claims=url + "/v1/claims/{id}",
        health=None if metrics is None else url + "/health",
        metrics=None if metrics is None else url + "/metrics",
    )
    return Serving(service, api, http, stop, prover, game, deployment, health)


def start(args: list[str]) -> Serving:
    """`refute serve ARGS` in this process with its game loop in a thread: how tests and
    benchmarks run it (the options are parsed exactly as on the command line)."""
    ctx = serve.make_context("serve", list(args))
    return launch(ctx.params).start()


@main.command()
@_service_options("prover")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="port to listen on (0: a free one, named in the `serving` event)",
)
@click.option(
    "--max-queue",
    default=DEFAULT_MAX_QUEUE,
    show_default=True,
    type=click.IntRange(min=1),
    help="requests waiting for their claims beyond which a request is refused with 429",
)
@click.option(
    "--served-model-name",
    default=None,
    help="the model's id in the API (default: demo for the shipped checkpoint, else the "
    "checkpoint directory's name or the built-in model's)",
)
@request_defaults(max_new_tokens=16)
@prover_drill_options(
    "a drill, as for `refute prove`: every claim's trace has this one element wrong, "
    "so that watchers dispute and overturn it"
)
def serve(**params: Any) -> None:
    """Serve an OpenAI-compatible API (POST /v1/completions, /v1/chat/completions; GET
    /v1/models, /v1/claims/ID, /health, /metrics) whose every answer is a claim on the chain,
    posted and defended as `refute prove` does; the answer names the claim (its `refute` field)
    for `refute check`."""
    from refute.bisection.eventlog import StatusLine
    from refute.bisection.service import stop_on_signals

    max_seconds, until_idle = params["max_seconds"], params["until_idle"]
    serving = launch(params)
    restore = stop_on_signals(serving.stop)
    status = StatusLine()
    serving.service.status = status
    try:
        serving.loop(max_seconds=max_seconds, until_idle=until_idle)
    finally:
        serving.close()
        status.close()
        restore()


@main.command()
@click.argument("answer", required=False, default=None)
@click.option(
    "--claim",
    "claim_id",
    type=click.IntRange(min=0),
    default=None,
    help="check this claim's status alone (no answer)",
)
@click.option(
    "--rpc",
    "rpc_url",
    default=None,
    envvar=["REFUTE_RPC_URL", "ETH_RPC_URL"],
    show_envvar=True,
    help="JSON-RPC URL of the node the game is on (host:port is taken as http://)",
)
@click.option(
    "--game",
    "game_address",
    default=None,
    help="address of the DisputeGame (default: the one the answer names)",
)
@click.option(
    "--model",
    "model_ref",
    default=None,
    help="the model (demo, a built-in name or a checkpoint directory): its root must be the "
    "claim's and its tokenizer must decode the claim's tokens to the answer's text",
)
@click.option("--wait", is_flag=True, help="wait until the claim is finalised or overturned")
@click.option(
    "--timeout",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds --wait waits at most",
)
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="seconds between reads of the claim while waiting",
)
@click.option(
    "--from-block",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="first block to read the claim's disputes from",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead")
def check(
    answer: str | None,
    claim_id: int | None,
    rpc_url: str | None,
    game_address: str | None,
    model_ref: str | None,
    wait: bool,
    timeout: float,
    interval: float,
    from_block: int,
    as_json: bool,
) -> None:
    """Check an answer of `refute serve` (a JSON file, '-' for stdin) against the chain: its
    tokens, prompt and roots must be the claim's (and its text, given --model); report whether
    the claim is pending, finalized or overturned. Exit status: 0 the answer is the claim's and
    the claim finalised (or is pending, without --wait); 1 it was overturned or the answer is
    not the claim's; 3 still pending when --wait timed out."""
    from refute.check import check_answer
    from refute.demo_model import DEMO_MODEL_DIR
    from refute.engine.checkpoint import load_model
    from refute.errors import RefuteError

    if (answer is None) == (claim_id is None):
        raise click.UsageError("give an answer file (or '-') or --claim ID")
    if rpc_url is None:
        raise click.UsageError(
            "give --rpc (or REFUTE_RPC_URL / ETH_RPC_URL): the node the claim's game is on "
            "(an embedded chain is private to the process that runs it)"
        )
    try:
        if answer is not None:
            try:
                text = sys.stdin.read() if answer == "-" else Path(answer).read_text()
            except OSError as exc:
                raise click.BadParameter(f"cannot read {answer}: {exc.strerror}") from None
            subject: Any = text
        else:
            subject = claim_id
            if game_address is None:
                raise click.UsageError("--claim needs --game")
        model = None
        if model_ref is not None:
            model = load_model(DEMO_MODEL_DIR if model_ref == "demo" else model_ref)
        result = check_answer(
            subject,
            rpc=rpc_url,
            address=game_address,
            model=model,
            wait=wait,
            timeout=timeout,
            interval=interval,
            from_block=from_block,
        )
    except RefuteError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(f"claim {result.claim}: {result.status}")
        for name in result.checked:
            click.echo(f"  ok        {name}")
        for problem in result.problems:
            click.echo(f"  MISMATCH  {problem}")
        for d in result.chain.get("disputes", []):
            click.echo(
                f"  dispute {d['id']} by {d['challenger']}: "
                f"{'won by the ' + d['winner'] + ' side' if d['winner'] else d['stage']}"
            )
    if not result.matches or result.status == "overturned":
        sys.exit(1)
    if wait and result.status == "pending":
        sys.exit(3)
