"""`refute serve`: the prover behind an OpenAI-compatible HTTP API (FastAPI on uvicorn).

    POST /v1/completions        POST /v1/chat/completions        GET /v1/models
    GET  /v1/claims/{id}        GET  /health                     GET /metrics

Every answer is a claim. A request is validated in the HTTP thread (unknown fields, parameters
refute cannot honour bit-reproducibly, the model's context), given an id (`cmpl-...`), and handed
to the prover's game loop through an `Inbox`, a request source of the `Service` (the same loop
`refute prove` runs): the loop accepts it into the prover's database under the key `id:<id>`
(durable: a restarted server serves it once), the model worker generates it, the loop posts the
claim and defends it, exactly as for a request read from a file. The answer is returned once the
claim is posted, with a `refute` field naming what makes it checkable (model, prompt and trace
roots, the output tokens, claim id, transaction hash, challenge deadline, game and chain id);
`refute check` (refute/check.py) verifies it against the chain. A request sent with an
`Idempotency-Key` header has an id derived from the key, so sending it again (its answer lost to
a dropped connection, a 503 at shutdown or a crash) is answered with the same claim.

Threads: the game loop owns the chain connection and the database (the embedded py-evm chain is
not thread-safe, and a `Store` is written by one thread), so it runs alone in its thread (the
main thread in the CLI, where SIGINT/SIGTERM end it after a round as for `refute prove`); uvicorn
runs its event loop in a second thread and never touches the chain: the inbox carries requests
in and posted claims out, and runs the chain reads of `GET /v1/claims/{id}` on the loop thread at
the start of its next round. The loop sleeps on a `Wakeup`, which a new request or a finished
generation wakes at once. Streamed tokens come from the model worker's thread
(`StreamingExecutor` reports every position's tokens) to the request's asyncio queue.

The text of an answer is `check.answer_text` of the claimed tokens: decoded up to the first
end-of-sequence token and cut before the first stop string. The claim itself always covers
`max_tokens` tokens (a claim's length is fixed before it is run); `usage.completion_tokens`
counts them all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from refute.bisection.player import request_to_json
from refute.bisection.prover import Prover
from refute.bisection.requests import RequestError, parse_request
from refute.chat import ChatTemplate, ChatTemplateError
from refute.check import CheckError, answer_text, claim_status, eos_token_ids
from refute.engine.committer import Committer
from refute.engine.executor import Executor, Generation, Request
from refute.engine.trace import prompt_root
from refute.errors import RefuteError

SAMPLING = "a claim fixes sampling to temperature and seed (Gumbel-max over the whole vocabulary)"
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "top_p": (1, 1.0),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "response_format": ({"type": "text"},),
    "parallel_tool_calls": (False,),
    "functions": ([],),
    "function_call": ("none",),
}
"""Parameters accepted only at the value (or null) that leaves the answer unchanged: refute
cannot honour others bit-reproducibly, so they are refused, never ignored."""
REFUSED = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "typical_p",
    "min_tokens",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "ignore_eos",
    "use_beam_search",
    "length_penalty",
    "prediction",
    "audio",
    "modalities",
    "reasoning_effort",
    "web_search_options",
)
"""Known parameters (OpenAI's, vLLM's) refused at any value but null."""
COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
}
COMPLETION = COMMON | {"prompt"}
CHAT = COMMON | {"messages", "max_completion_tokens"}


class ApiError(RefuteError):
    """An HTTP error answer in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


# --- the game loop's side ------------------------------------------------------------------------


class Wakeup(threading.Event):
    """The game loop's stop event (`Service.run(stop)`), whose waits `wake()` also ends early:
    a new request or a finished generation is acted on at once, not after the poll interval."""

    def __init__(self) -> None:
        super().__init__()
        self._poke = threading.Event()

    def wake(self) -> None:
        self._poke.set()

    def set(self) -> None:
        super().set()
        self._poke.set()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set():
            self._poke.wait(timeout)
            self._poke.clear()
        return self.is_set()


class StreamingExecutor(Executor):
    """An Executor that hands every generation to `listener` after each step (each position of
    each sequence run), from the thread running it: how streamed tokens leave the model worker
    while the generation goes on. The bits are those of `Executor` (it only reads them)."""

    listener: Callable[[Generation], None] | None = None

    def _run_rows(self, rows: list[tuple[Generation, int]], commits: Committer) -> None:
        super()._run_rows(rows, commits)
        listener = self.listener
        if listener is not None:
            for gen in {id(g): g for g, _ in rows}.values():
                listener(gen)


class ServingProver(Prover):
    """A Prover that tells `on_posted(key, claim_id)` of each claim as soon as it is posted
    (on the loop thread, within the round), so an answer leaves without waiting a round."""

    on_posted: Callable[[str, int], None] | None = None

    def post(self, request: Request, gen: Generation, **kwargs: Any) -> int:
        claim_id = super().post(request, gen, **kwargs)
        key = kwargs.get("key")
        if self.on_posted is not None and key is not None:
            self.on_posted(key, claim_id)
        return claim_id


@dataclass
class Pending:
    """One API request until its claim is posted."""

    key: str
    ask: Ask
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queue: asyncio.Queue | None = None  # streamed token lists (streams only)
    loop: asyncio.AbstractEventLoop | None = None


class Inbox:
    """The API's request source for the `Service` (its `lines()` is called on the loop thread
    at the start of every round): answers the requests whose claims were posted, runs the chain
    reads the API asked for, and returns the new requests, which the Service accepts into the
    prover's database as it accepts lines of a request file."""

    path = "api"

    def __init__(self, prover: Any, game: Any) -> None:
        self.prover = prover
        self.game = game
        self._lock = threading.Lock()
        self._new: list[tuple[str, dict[str, Any], int]] = []
        self._calls: list[tuple[Callable[[], Any], concurrent.futures.Future]] = []
        self.waiting: dict[str, list[Pending]] = {}  # key -> its callers (one per retry)
        self.backlog = 0  # requests queued in the database that no API caller waits for
        self.closed = False

    # HTTP thread
    def submit(self, pending: Pending, line: dict[str, Any]) -> None:
        """Hand a request to the loop; a retry of one already waiting (the same
        Idempotency-Key) waits for the same claim."""
        with self._lock:
            if self.closed:
                raise ApiError(503, "the server is shutting down: send the request again "
                               "once it is back", kind="server_error")  # fmt: skip
            callers = self.waiting.setdefault(pending.key, [])
            if not callers:
                self._new.append((pending.key, line, 0))
            callers.append(pending)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the loop thread (chain reads) at its next round."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._calls.append((fn, future))
        return future

    def outstanding(self) -> int:
        with self._lock:
            return len(self.waiting) + self.backlog

    # loop thread
    def lines(self) -> list[tuple[str, dict[str, Any], int]]:
        with self._lock:
            new, self._new = self._new, []
            calls, self._calls = self._calls, []
            waiting = dict(self.waiting)
        for key in waiting:
            self.posted(key)
        for fn, future in calls:
            if future.done():  # its caller went away
                continue
            try:
                _settle(future, value=fn())
            except Exception as exc:
                _settle(future, error=exc)
        queued = self.prover.queued()
        with self._lock:
            self.backlog = sum(1 for k in queued if k not in self.waiting)
        return new

    def posted(self, key: str, _claim_id: int | None = None) -> None:
        """Answer the callers of API request `key` if its claim is posted, or it failed (loop
        thread)."""
        with self._lock:
            callers = list(self.waiting.get(key, ()))
        if not callers:
            return
        try:
            done = [p for p in callers if self._publish(key, p)]
        except Exception:  # the node: answered at a later round
            return
        with self._lock:
            left = [p for p in self.waiting.get(key, ()) if p not in done]
            if left:
                self.waiting[key] = left
            else:
                self.waiting.pop(key, None)

    def _publish(self, key: str, pending: Pending) -> bool:
        info = self.prover.store["requests"].get(key)
        if info is None:
            return False
        if pending.future.done():  # its caller went away (the claim is posted all the same)
            return True
        if info["request"] != request_to_json(pending.ask.request):
            _settle(pending.future, error=ApiError(
                422,
                f"the Idempotency-Key of request {pending.ask.rid} was used before for a "
                "different request (prompt, max_tokens, temperature or seed)",
                param="Idempotency-Key", code="idempotency_key_reused",
            ))  # fmt: skip
            return True
        if info["status"] == "failed":
            reason = f"the request could not be run: {info.get('reason')}"
            _settle(pending.future, error=ApiError(500, reason, kind="server_error"))
            return True
        if info["status"] != "served":
            return False
        cid = int(info["claim"])
        claim = self.prover.store["claims"][str(cid)]
        c = self.game.claim(cid)
        _settle(
            pending.future,
            value={
                "claim": cid,
                "tx": claim.get("tx"),
                "block": claim["block"],
                "tokens": list(claim["tokens"]),
                "trace_root": "0x" + c.trace_root.hex(),
                "prompt_root": "0x" + c.prompt_root.hex(),
                "model_root": "0x" + c.model_root.hex(),
                "deadline": int(c.deadline),
            },
        )
        return True

    def close(self) -> None:
        """Requests still waiting are answered with an error (the server is going down)."""
        with self._lock:
            self.closed = True
            waiting, self.waiting = self.waiting, {}
            calls, self._calls = self._calls, []
            unaccepted = {key for key, _, _ in self._new}  # never reached the database
            self._new = []
        queued = ApiError(
            503,
            "the server is shutting down; the request stays queued and is served when it "
            "restarts: send it again with the same Idempotency-Key header for its answer",
            kind="server_error",
        )
        lost = ApiError(
            503,
            "the server is shutting down and did not queue the request: send it again",
            kind="server_error",
        )
        for key, callers in waiting.items():
            for pending in callers:
                _settle(pending.future, error=lost if key in unaccepted else queued)
        for _, future in calls:
            _settle(future, error=lost)


def _settle(
    future: concurrent.futures.Future, value: Any = None, error: BaseException | None = None
) -> None:
    """Resolve `future` unless it is resolved or cancelled already (a caller that went away)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


# --- requests ------------------------------------------------------------------------------------


@dataclass
class Ask:
    """A validated API request: what is claimed (`request`) and how the answer is shown."""

    chat: bool
    rid: str
    request: Request
    stop: list[str]
    stream: bool
    include_usage: bool

    @property
    def key(self) -> str:
        return f"id:{self.rid}"


def _refuse_parameters(body: dict[str, Any], known: set[str]) -> None:
    """400 naming every parameter refute would have to ignore, and every unknown field."""
    unsupported = []
    for name, value in body.items():
        if name in NEUTRAL:
            if value is not None and value not in NEUTRAL[name]:
                unsupported.append(f"{name}={json.dumps(value)[:40]}")
        elif name in REFUSED:
            if value is not None:
                unsupported.append(f"{name}={json.dumps(value)[:40]}")
        elif name == "n" and value not in (None, 1):
            unsupported.append(f"n={json.dumps(value)[:40]}")
    if unsupported:
        first = unsupported[0].split("=", 1)[0]
        raise ApiError(
            400,
            f"unsupported parameters: {', '.join(unsupported)}; {SAMPLING}, one "
            "answer per request and no log-probabilities, so only their neutral "
            "values are accepted",
            param=first,
            code="unsupported_parameter",
        )
    unknown = sorted(set(body) - known - set(NEUTRAL) - set(REFUSED))
    if unknown:
        raise ApiError(
            400,
            f"unknown parameters: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )


def _integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(
            400,
            f"{name} must be an integer in [{low}, {high}], got {json.dumps(value)[:40]}",
            param=name,
        )
    return value


class Api:
    """The HTTP API of one prover: validation, the queue, the answers (see the module doc)."""

    def __init__(
        self,
        prover: Any,
        game: Any,
        deployment: Any,
        *,
        model_id: str,
        wake: Callable[[], None],
        defaults: Request,
        max_queue: int,
        metrics: Any = None,
        log: Callable[..., None] | None = None,
    ) -> None:
        self.prover = prover
        self.model = prover.model
        self.game = game
        self.deployment = deployment
        self.model_id = model_id
        self.wake = wake
        self.defaults = defaults
        self.max_queue = max_queue
        self.metrics = metrics
        self.log = log or (lambda *_a, **_k: None)
        self.inbox = Inbox(prover, game)
        self.template = ChatTemplate.of(self.model)
        self.eos = eos_token_ids(self.model)
        self.model_root = "0x" + self.model.root.hex()
        self._streams: dict[int, Pending] = {}  # id(pending) -> a stream waiting for tokens
        self._lock = threading.Lock()
        self._counter = None
        if metrics is not None:
            from prometheus_client import Counter

            self._counter = Counter(
                "refute_api_requests",
                "API requests answered, by endpoint and HTTP status",
                ["endpoint", "code"],
                registry=metrics.registry,
            )
        if isinstance(prover, ServingProver):
            prover.on_posted = self.inbox.posted
        executor = prover.executor
        if isinstance(executor, StreamingExecutor):
            executor.listener = self._on_generation
        self.app = self._build_app()

    # --- validation ------------------------------------------------------------------------

    def _common(self, body: dict[str, Any], chat: bool) -> tuple[int, float, int, list[str]]:
        model = body.get("model")
        if model not in (self.model_id, self.model_root, self.model.name):
            raise ApiError(
                404,
                f"the model {model!r} is not served here: this server serves "
                f"{self.model_id!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        new = _integer(body, "max_tokens", self.defaults.max_new_tokens, 1, 2**31)
        if chat and body.get("max_completion_tokens") is not None:
            new = _integer(body, "max_completion_tokens", new, 1, 2**31)
        temperature = body.get("temperature")
        if temperature is None:
            temperature = self.defaults.temperature
        if (
            not isinstance(temperature, int | float)
            or isinstance(temperature, bool)
            or not 0 <= temperature < float("inf")
        ):
            raise ApiError(400, "temperature must be a finite number >= 0", param="temperature")
        seed = _integer(body, "seed", self.defaults.seed, 0, 2**256 - 1)
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stop, list)
            or len(stop) > 4
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise ApiError(
                400, "stop must be a non-empty string or a list of at most 4", param="stop"
            )
        return new, float(temperature), seed, stop

    def _ask(
        self,
        chat: bool,
        body: dict[str, Any],
        prompt: list[int],
        new: int,
        temperature: float,
        seed: int,
        stop: list[str],
        idempotency_key: str | None = None,
    ) -> Ask:
        p = self.model.program
        positions = len(prompt) + new - 1
        if positions > p.max_positions:
            raise ApiError(
                400,
                f"this request needs {positions} positions (a prompt of "
                f"{len(prompt)} tokens and max_tokens {new}, less one): the model "
                f"{self.model_id} runs at most {p.max_positions}"
                f"{getattr(self.model, 'context_note', '')}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        rid = ("chatcmpl-" if chat else "cmpl-") + _request_suffix(idempotency_key)
        line = {
            "tokens": prompt,
            "max_new_tokens": new,
            "temperature": temperature,
            "seed": seed,
            "id": rid,
        }
        try:
            request = parse_request(line, self.model)
        except RequestError as exc:
            raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false", param="stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise ApiError(400, 'stream_options takes only "include_usage"', param="stream_options")
        return Ask(chat, rid, request, stop, stream, bool(options.get("include_usage")))

    def parse_completion(self, body: dict[str, Any], idempotency_key: str | None = None) -> Ask:
        _refuse_parameters(body, COMPLETION)
        new, temperature, seed, stop = self._common(body, chat=False)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "the prompt is empty", param="prompt")
            if self.model.tokenizer is None:
                raise ApiError(
                    400, f"{self.model_id} has no tokenizer: send token ids", param="prompt"
                )
            tokens = list(self.model.tokenizer.encode(prompt).ids)
        elif (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            tokens = list(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, str | list) for t in prompt):
            raise ApiError(
                400, "one prompt per request (n prompts would be n claims)", param="prompt"
            )
        else:
            raise ApiError(
                400, "prompt must be a non-empty string or a list of token ids", param="prompt"
            )
        return self._ask(False, body, tokens, new, temperature, seed, stop, idempotency_key)

    def parse_chat(self, body: dict[str, Any], idempotency_key: str | None = None) -> Ask:
        _refuse_parameters(body, CHAT)
        new, temperature, seed, stop = self._common(body, chat=True)
        if self.template is None:
            raise ApiError(
                400,
                f"the model {self.model_id} has no chat template (no "
                "chat_template in its tokenizer_config.json, no chat_template.jinja):"
                " use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise ApiError(
                400, "messages must be a non-empty list of objects with a role", param="messages"
            )
        try:
            tokens = self.template.encode(self.model.tokenizer, messages)
        except ChatTemplateError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        if not tokens:
            raise ApiError(
                400, "the chat template renders these messages as nothing", param="messages"
            )
        return self._ask(True, body, tokens, new, temperature, seed, stop, idempotency_key)

    # --- queue and answers -----------------------------------------------------------------

    def _admit(self, ask: Ask) -> Pending:
        pending = Pending(ask.key, ask)
        if ask.stream:
            pending.loop = asyncio.get_running_loop()
            pending.queue = asyncio.Queue()
        with self._lock:  # one admission at a time: the count and the submission agree
            if self.inbox.outstanding() >= self.max_queue:
                raise ApiError(
                    429,
                    f"the queue is full ({self.max_queue} requests waiting for "
                    "their claims): retry later",
                    code="queue_full",
                    kind="rate_limit_error",
                )
            line = {
                "tokens": list(ask.request.prompt),
                "max_new_tokens": ask.request.max_new_tokens,
                "temperature": ask.request.temperature,
                "seed": ask.request.seed,
                "id": ask.rid,
            }
            self.inbox.submit(pending, line)
            if ask.stream:  # each report carries every token so far: none is missed
                self._streams[id(pending)] = pending
        self.wake()
        return pending

    def _on_generation(self, gen: Generation) -> None:
        """From the model worker: a generation advanced (tokens to the streams that wait for
        it; identical requests give identical tokens, so matching by request is exact)."""
        with self._lock:
            streams = [p for p in self._streams.values() if p.ask.request == gen.request]
        if streams:
            tokens = list(gen.output_tokens)
            for p in streams:
                p.loop.call_soon_threadsafe(p.queue.put_nowait, tokens)
        if gen.done:
            self.wake()

    def extension(self, ask: Ask, posted: dict[str, Any] | None) -> dict[str, Any]:
        """The `refute` field: what makes the answer checkable (`refute check`)."""
        r = ask.request
        ext = {
            "request_id": ask.rid,
            "model": self.model_id,
            "model_root": self.model_root,
            "prompt_root": "0x" + prompt_root(list(r.prompt)).hex(),
            "prompt_tokens": list(r.prompt),
            "max_tokens": r.max_new_tokens,
            "temperature": r.temperature,
            "seed": r.seed,
            "stop": ask.stop,
            "game": self.deployment.game,
            "chain_id": self.deployment.chain_id,
        }
        if posted is not None:
            ext |= {
                "claim": posted["claim"],
                "tx": posted["tx"],
                "block": posted["block"],
                "trace_root": posted["trace_root"],
                "tokens": posted["tokens"],
                "deadline": posted["deadline"],
                "status": "pending",
                "claim_url": f"/v1/claims/{posted['claim']}",
            }
        return ext

    def _usage(self, ask: Ask, tokens: list[int]) -> dict[str, int]:
        n = len(ask.request.prompt)
        return {
            "prompt_tokens": n,
            "completion_tokens": len(tokens),
            "total_tokens": n + len(tokens),
        }

    def _response(self, ask: Ask, posted: dict[str, Any]) -> dict[str, Any]:
        text, reason = answer_text(self.model.tokenizer, posted["tokens"], ask.stop, self.eos)
        if ask.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        return {
            "id": ask.rid,
            "object": "chat.completion" if ask.chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [choice],
            "usage": self._usage(ask, posted["tokens"]),
            "system_fingerprint": f"refute-{self.model_root[2:18]}",
            "refute": self.extension(ask, posted),
        }

    def _chunk(
        self,
        ask: Ask,
        delta: str | None,
        reason: str | None,
        ext: dict[str, Any] | None = None,
        first: bool = False,
    ) -> str:
        if ask.chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if delta:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
        chunk = {
            "id": ask.rid,
            "object": "chat.completion.chunk" if ask.chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [choice],
            "refute": ext or self.extension(ask, None),
        }
        return f"data: {json.dumps(chunk)}\n\n"

    async def _sse(self, ask: Ask, pending: Pending) -> AsyncIterator[str]:
        """Server-sent events: text deltas as tokens are generated (held back while they could
        still become a stop string or end inside a character), then the final chunk with the
        finish reason and the claim, then [DONE]."""
        tokenizer, emitted = self.model.tokenizer, ""
        posted = asyncio.wrap_future(pending.future)
        try:
            if ask.chat:
                yield self._chunk(ask, None, None, first=True)
            while not posted.done():
                getter = asyncio.ensure_future(pending.queue.get())
                await asyncio.wait({getter, posted}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                tokens = getter.result()
                while not pending.queue.empty():
                    tokens = pending.queue.get_nowait()
                text, _ = answer_text(tokenizer, tokens, ask.stop, self.eos)
                safe = _held_back(text, ask.stop)
                if len(safe) > len(emitted) and safe.startswith(emitted):
                    yield self._chunk(ask, safe[len(emitted) :], None)
                    emitted = safe
            try:
                info = await posted
            except ApiError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            final = self._response(ask, info)
            choice = final["choices"][0]
            text = choice["message"]["content"] if ask.chat else choice["text"]
            rest = text[len(emitted) :] if text.startswith(emitted) else ""
            ext = final["refute"]
            if rest:
                yield self._chunk(ask, rest, None, ext)
            yield self._chunk(ask, None, choice["finish_reason"], ext)
            if ask.include_usage:
                usage = {
                    "id": ask.rid,
                    "object": "chat.completion.chunk" if ask.chat else "text_completion",
                    "created": int(time.time()),
                    "model": self.model_id,
                    "choices": [],
                    "usage": final["usage"],
                    "refute": ext,
                }
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            with self._lock:
                self._streams.pop(id(pending), None)
            # a client that went away leaves the outcome unread: read it, so asyncio is quiet
            posted.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def answer(self, ask: Ask) -> Any:
        pending = self._admit(ask)
        self.log(
            "api.request",
            request=ask.key,
            id=ask.rid,
            stream=ask.stream,
            prompt_tokens=len(ask.request.prompt),
            max_tokens=ask.request.max_new_tokens,
        )
        if ask.stream:
            return StreamingResponse(
                self._sse(ask, pending),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        posted = await asyncio.wrap_future(pending.future)
        return JSONResponse(self._response(ask, posted))

    async def claim(self, claim_id: int) -> dict[str, Any]:
        block = self.deployment.block
        future = self.inbox.call(lambda: claim_status(self.game, claim_id, block))
        try:
            return await asyncio.wrap_future(future)
        except CheckError as exc:
            raise ApiError(404, str(exc), param="claim_id", code="claim_not_found") from None

    # --- the app ---------------------------------------------------------------------------

    def _count(self, endpoint: str, code: int) -> None:
        if self._counter is not None:
            self._counter.labels(endpoint=endpoint, code=str(code)).inc()

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="refute serve", docs_url=None, redoc_url=None, openapi_url=None)
        api = self

        @app.exception_handler(ApiError)
        async def api_error(request: HttpRequest, exc: ApiError) -> JSONResponse:
            api._count(request.url.path, exc.status)
            return JSONResponse(exc.body(), status_code=exc.status)

        async def body_of(request: HttpRequest) -> dict[str, Any]:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the body is not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object")
            return body

        def idempotency_key(request: HttpRequest) -> str | None:
            key = request.headers.get("idempotency-key")
            if key is not None and not (
                0 < len(key) <= 255 and all(33 <= ord(c) < 127 for c in key)
            ):
                raise ApiError(
                    400,
                    "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
                    param="Idempotency-Key",
                )
            return key

        @app.post("/v1/completions", response_model=None)
        async def completions(request: HttpRequest) -> Any:
            ask = api.parse_completion(await body_of(request), idempotency_key(request))
            response = await api.answer(ask)
            api._count("/v1/completions", 200)
            return response

        @app.post("/v1/chat/completions", response_model=None)
        async def chat_completions(request: HttpRequest) -> Any:
            ask = api.parse_chat(await body_of(request), idempotency_key(request))
            response = await api.answer(ask)
            api._count("/v1/chat/completions", 200)
            return response

        @app.get("/v1/models", response_model=None)
        async def models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [
                    {
                        "id": api.model_id,
                        "object": "model",
                        "created": 0,
                        "owned_by": "refute",
                        "max_model_len": api.model.program.max_positions,
                        "refute": {
                            "model_root": api.model_root,
                            "game": api.deployment.game,
                            "chain_id": api.deployment.chain_id,
                            "chat_template": api.template is not None,
                        },
                    }
                ],
            }

        @app.get("/v1/claims/{claim_id}", response_model=None)
        async def claims(claim_id: int) -> dict[str, Any]:
            if claim_id < 0:
                raise ApiError(404, f"no claim {claim_id}", param="claim_id")
            return await api.claim(claim_id)

        @app.get("/health", response_model=None)
        async def health() -> JSONResponse:
            if api.metrics is None:
                return JSONResponse({"status": "ok", "reasons": []})
            report = api.metrics.health()
            report["api_queue"] = api.inbox.outstanding()
            return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

        @app.get("/metrics", response_model=None)
        async def metrics() -> Response:
            if api.metrics is None:
                raise ApiError(404, "metrics are off (--no-metrics)")
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(api.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

        return app


def _request_suffix(idempotency_key: str | None) -> str:
    """The request id's tail: fresh, or a digest of the client's Idempotency-Key, so that a
    request sent again with the same key (after a lost answer, a 503 at shutdown or a crash
    of the server) names the same database entry and is answered with the same claim."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return "ik-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _held_back(text: str, stop: list[str]) -> str:
    """`text` less what may still change as tokens arrive: a trailing incomplete character
    (U+FFFD) and a tail that is the beginning of a stop string."""
    text = text.rstrip("\ufffd")
    cut = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                cut = max(cut, k)
                break
    return text[: len(text) - cut]


# --- the HTTP server -----------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), bound before anything is deployed
    so that a taken port is named first. Raises ServeError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except (OSError, OverflowError, IndexError) as exc:
        raise ServeError(f"cannot serve on {host}:{port}: {exc}") from None


class ServeError(RefuteError):
    """The API cannot be served (the port is taken, the host is not an address of this machine)."""


class HttpServer:
    """uvicorn serving `app` on a bound socket, from a daemon thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self, timeout: float = 30.0) -> HttpServer:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="refute-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()
