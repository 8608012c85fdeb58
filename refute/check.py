"""Checking an answer as a client: is this text the output of a claim, and did the claim stand?

An answer of `refute serve` carries, in its `refute` field, the claim it was posted as (claim id,
game address, chain id) and what the claim commits to (model, prompt and trace roots, the output
tokens). `check_answer` reads the claim from the chain, not from the server, and verifies that

- the answer's output tokens are the claim's: keccak256 of their packed uint32 encoding is the
  claim's `tokensHash` (the contract keeps only the hash; the tokens are in `ClaimPosted`);
- the answer's prompt root, model root and trace root are the claim's, and the prompt tokens it
  lists hash to that prompt root;
- given the model (its tokenizer), the text is `answer_text` of those tokens: decoded up to the
  first end-of-sequence token, cut before the first stop string the request named;

and reports the claim's status (pending, finalized, overturned, with the disputes and their
winners), waiting for it to leave `pending` with `wait=True`.

    result = check_answer(response, rpc="http://127.0.0.1:8545", model=load_model("demo"),
                          wait=True)
    result.ok        # the answer is the claim's and the claim finalised
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

from refute.contracts.game import ClaimStatus, encode_tokens
from refute.engine.trace import prompt_root
from refute.errors import RefuteError

TOKEN_MISMATCH = 2**256 - 1
"""The dispute id `ClaimOverturned` names when a claim fell to a token-mismatch proof."""
WINNERS = {0: None, 1: "claim", 2: "challenge"}


class CheckError(RefuteError, ValueError):
    """An answer cannot be checked: not an answer of refute serve, no such claim, no chain."""


# --- what an answer's text is ------------------------------------------------------------------


def eos_token_ids(model: Any) -> frozenset[int]:
    """End-of-sequence ids of a checkpoint (generation_config.json, else config.json); none for
    a built-in model. An answer's text ends before the first of them (the claim goes on: a
    claim covers every token up to max_tokens)."""
    directory = Path(str(getattr(model, "name", model)))
    for name in ("generation_config.json", "config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text()).get("eos_token_id")
        except (ValueError, AttributeError):
            continue
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        return frozenset(int(v) for v in values if isinstance(v, int))
    return frozenset()


def answer_text(
    tokenizer: Any,
    tokens: list[int],
    stop: list[str] | tuple[str, ...] = (),
    eos: frozenset[int] | set[int] = frozenset(),
) -> tuple[str, str]:
    """(text, finish_reason) of claimed output tokens: the tokens before the first
    end-of-sequence id, decoded, cut before the earliest occurrence of a stop string;
    finish_reason "stop" if either ended it, else "length"."""
    cut = next((i for i, t in enumerate(tokens) if t in eos), None)
    text = tokenizer.decode(list(tokens if cut is None else tokens[:cut]))
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if hits:
        return text[: min(hits)], "stop"
    return text, "length" if cut is None else "stop"


def tokens_hash(tokens: list[int]) -> bytes:
    """The claim's `tokensHash` of output tokens: keccak256 of their uint32 little-endian bytes."""
    return keccak(encode_tokens(tokens))


# --- the claim as the chain says ---------------------------------------------------------------


def claim_status(game: Any, claim_id: int, from_block: int = 0) -> dict[str, Any]:
    """A claim's state and disputes, read from the chain: status (pending, finalized,
    overturned), the roots and hash it commits to, each dispute with its winner (None while it
    runs), and what overturned it (a dispute id, or "token-mismatch")."""
    try:
        c = game.claim(int(claim_id))
    except Exception:  # a claim id past claimCount reverts on some nodes
        c = None
    if c is None or c.status == ClaimStatus.NONE:
        raise CheckError(f"no claim {claim_id} on the game at {game.game.address}")
    disputes = []
    for e in game.events("DisputeOpened", from_block, claimId=int(claim_id)):
        d = game.dispute(int(e["disputeId"]))
        disputes.append(
            {
                "id": int(e["disputeId"]),
                "challenger": e["challenger"],
                "stage": d.stage.name.lower(),
                "winner": WINNERS.get(d.winner),
            }
        )
    overturned_by: Any = None
    if c.status == ClaimStatus.OVERTURNED:
        for e in game.events("ClaimOverturned", from_block, claimId=int(claim_id)):
            did = int(e["disputeId"])
            overturned_by = "token-mismatch" if did == TOKEN_MISMATCH else did
    return {
        "claim": int(claim_id),
        "status": c.status.name.lower(),
        "claimant": c.claimant,
        "deadline": int(c.deadline),
        "open_disputes": int(c.open_disputes),
        "model_root": _hex(c.model_root),
        "prompt_root": _hex(c.prompt_root),
        "trace_root": _hex(c.trace_root),
        "tokens_hash": _hex(c.tokens_hash),
        "records": int(c.num_records),
        "prompt_length": int(c.prompt_length),
        "output_length": int(c.output_length),
        "disputes": disputes,
        "overturned_by": overturned_by,
        "game": game.game.address,
        "chain_id": int(game.w3.eth.chain_id),
    }


# --- the check ---------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """What `check_answer` found. `matches`: the answer is the claim's (every check passed);
    `ok`: it matches and the claim finalised."""

    claim: int
    status: str
    matches: bool
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    chain: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.matches and self.status == "finalized"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def extension(answer: Any) -> tuple[dict[str, Any], str | None]:
    """The `refute` fields of an answer and its text: `answer` is a response (a dict, or an
    object of the openai client), its `refute` dict (with an optional "text"), or JSON text."""
    if isinstance(answer, str | bytes):
        try:
            answer = json.loads(answer)
        except ValueError as exc:
            raise CheckError(f"the answer is not JSON: {exc}") from None
    for method in ("to_dict", "model_dump"):
        if hasattr(answer, method) and not isinstance(answer, dict):
            answer = getattr(answer, method)()
            break
    if not isinstance(answer, dict):
        raise CheckError("an answer is a JSON object (a response of refute serve)")
    ext = answer.get("refute", answer if "claim" in answer else None)
    if not isinstance(ext, dict):
        raise CheckError('the answer has no "refute" field: not an answer of refute serve')
    text = answer.get("text")
    choices = answer.get("choices") or []
    if text is None and choices and isinstance(choices[0], dict):
        choice = choices[0]
        text = choice.get("text")
        if text is None and isinstance(choice.get("message"), dict):
            text = choice["message"].get("content")
    return ext, text


def check_answer(
    answer: Any,
    *,
    game: Any = None,
    rpc: str | None = None,
    address: str | None = None,
    model: Any = None,
    wait: bool = False,
    timeout: float = 3600.0,
    interval: float = 1.0,
    from_block: int = 0,
) -> CheckResult:
    """Check `answer` (see `extension`; or a claim id, for its status alone) against the chain:
    the game client `game`, or the one at `address` (default: the game the answer names) on
    the node `rpc`. `model` (a loaded Model) adds the model-root and text checks. With `wait`,
    poll every `interval` s until the claim is no longer pending or `timeout` s have passed."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        ext, text = {"claim": answer}, None
    else:
        ext, text = extension(answer)
    if ext.get("claim") is None:
        raise CheckError("the answer names no claim (it was not posted)")
    if game is None:
        from refute.contracts.chain import connect
        from refute.contracts.game import GameClient

        address = address or ext.get("game")
        if address is None:
            raise CheckError("no game address: give one (the answer names none)")
        if rpc is None:
            raise CheckError("no chain: give the JSON-RPC URL of a node (--rpc)")
        game = GameClient.at(connect(rpc), address)
    cid = int(ext["claim"])
    deadline = time.monotonic() + timeout
    chain = claim_status(game, cid, from_block)
    while wait and chain["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
        chain = claim_status(game, cid, from_block)
    problems, checked = _compare(ext, text, chain, model)
    return CheckResult(cid, chain["status"], not problems, problems, checked, chain)


def _compare(
    ext: dict[str, Any], text: str | None, chain: dict[str, Any], model: Any
) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    checked: list[str] = []

    def expect(name: str, ok: bool, problem: str) -> None:
        (checked if ok else problems).append(name if ok else problem)

    if ext.get("chain_id") is not None:
        expect(
            "chain_id",
            int(ext["chain_id"]) == chain["chain_id"],
            f"the answer names chain {ext['chain_id']}, the node is chain {chain['chain_id']}",
        )
    if ext.get("game") is not None:
        expect(
            "game",
            str(ext["game"]).lower() == chain["game"].lower(),
            f"the answer names game {ext['game']}, checked on {chain['game']}",
        )
    for key in ("model_root", "prompt_root", "trace_root"):
        if ext.get(key) is not None:
            expect(
                key,
                str(ext[key]).lower() == chain[key],
                f"{key} {ext[key]} is not the claim's {chain[key]}",
            )
    tokens = ext.get("tokens")
    if tokens is not None:
        digest = _hex(tokens_hash(tokens))
        expect(
            "tokens",
            digest == chain["tokens_hash"],
            f"the answer's {len(tokens)} tokens hash to {digest}, the claim's tokensHash is "
            f"{chain['tokens_hash']}",
        )
    prompt = ext.get("prompt_tokens")
    if prompt is not None:
        root = _hex(prompt_root(list(prompt)))
        expect(
            "prompt_tokens",
            root == chain["prompt_root"],
            f"the answer's prompt tokens have root {root}, the claim's prompt root is "
            f"{chain['prompt_root']}",
        )
    if model is not None:
        root = _hex(model.root)
        expect(
            "model",
            root == chain["model_root"],
            f"the model given has root {root}, the claim names {chain['model_root']}",
        )
        if text is not None and tokens is not None and model.tokenizer is not None:
            want, _ = answer_text(
                model.tokenizer, list(tokens), ext.get("stop") or (), eos_token_ids(model)
            )
            expect(
                "text",
                text == want,
                f"the text is not the claim's tokens decoded: {text[:80]!r} vs {want[:80]!r}",
            )
    return problems, checked


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()
