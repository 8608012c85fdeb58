"""`refute serve` (refute/server.py) through the official `openai` client, and `refute check`
(refute/check.py): completions, chat completions and streams on the demo model, whose answers
are claims that finalise on the embedded chain with the tokens `refute run` gives; refused
parameters, a full queue, a request beyond the context; and, on anvil, a cheating server whose
answer an in-process watcher overturns, which `refute check` then reports with exit status 1."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner
from web3 import Web3

from refute.chat import ChatTemplate
from refute.check import answer_text, check_answer, eos_token_ids
from refute.cli import main
from refute.cli.serve import start
from refute.demo_model import DEMO_MODEL_DIR
from refute.engine.checkpoint import load_model

TEMPLATE = (
    "{%- set ns = namespace(n=0) -%}\n"
    "{% for message in messages %}\n"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}\n"
    "{% set ns.n = ns.n + 1 %}\n"
    "<|{{ message['role'] }}|>\n"
    "{{ message['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory) -> Path:
    """The demo checkpoint with a chat template (the shipped one has none)."""
    directory = tmp_path_factory.mktemp("ckpt") / "demo-chat"
    directory.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(DEMO_MODEL_DIR / name, directory / name)
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": TEMPLATE,
                "eos_token": "<|endoftext|>",
                "bos_token": None,
            }
        )
    )
    return directory


@pytest.fixture(scope="module")
def served(chat_checkpoint: Path, tmp_path_factory):
    """`refute serve` on the embedded chain (a 4 s window), its loop in a thread."""
    state = tmp_path_factory.mktemp("serve")
    serving = start(
        [
            "--model",
            str(chat_checkpoint),
            "--port",
            "0",
            "--window",
            "4",
            "--interval",
            "1",
            "--max-queue",
            "1",
            "--state",
            str(state / "s"),
            "--log-file",
            str(state / "log"),
        ]
    )
    yield serving
    serving.close()


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="none", max_retries=0)


def _claim(url: str, claim_id: int, until: tuple[str, ...], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/claims/{claim_id}", timeout=30).json()
        if status["status"] in until or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def _run(demo_dir: Path, prompt: str, new: int, temperature: float, seed: int) -> dict:
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--model",
            str(demo_dir),
            "--prompt",
            prompt,
            "--max-new-tokens",
            str(new),
            "--temperature",
            str(temperature),
            "--seed",
            str(seed),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.splitlines()[-1])


def test_completion_is_a_claim_with_the_tokens_of_refute_run(served, client, demo) -> None:
    """The answer's tokens, prompt root and trace root are those of `refute run` on the same
    request, bit for bit; its text is their decoding; the claim finalises after the window and
    `check_answer` finds the answer to be the claim's (and a doctored one not)."""
    models = client.models.list().data
    assert [m.id for m in models] == ["demo-chat"]
    assert models[0].model_extra["refute"]["model_root"] == "0x" + demo.root.hex()
    response = client.completions.create(
        model="demo-chat", prompt="Return a new", max_tokens=10, temperature=0.7, seed=5
    )
    ext = response.model_extra["refute"]
    run = _run(DEMO_MODEL_DIR, "Return a new", 10, 0.7, 5)
    assert ext["tokens"] == run["tokens"] and len(ext["tokens"]) == 10
    assert ext["prompt_tokens"] == run["prompt"]
    assert (ext["trace_root"], ext["prompt_root"], ext["model_root"]) == (
        run["trace_root"],
        run["prompt_root"],
        run["model_root"],
    )
    text, reason = answer_text(demo.tokenizer, ext["tokens"], (), eos_token_ids(demo))
    assert response.choices[0].text == text and response.choices[0].finish_reason == reason
    assert response.usage.completion_tokens == 10
    assert response.usage.prompt_tokens == len(run["prompt"])
    assert response.id == ext["request_id"] and ext["tx"].startswith("0x")
    assert ext["game"] == served.deployment.game and ext["claim"] == 0
    status = _claim(served.url, ext["claim"], ("finalized", "overturned"))
    assert status["status"] == "finalized" and status["disputes"] == []
    assert status["trace_root"] == ext["trace_root"] and status["deadline"] == ext["deadline"]
    # the request went through the prover's durable queue under the API's id
    info = served.prover.store["requests"][f"id:{response.id}"]
    assert info["status"] == "served" and info["claim"] == ext["claim"]
    # the check runs on the loop thread: the embedded chain is not thread-safe
    answer = response.to_dict()
    result = served.api.inbox.call(lambda: check_answer(answer, game=served.game, model=demo))
    served.stop.wake()
    result = result.result(timeout=30)
    assert result.ok and result.status == "finalized"
    assert {"tokens", "prompt_tokens", "trace_root", "text", "model"} <= set(result.checked)
    doctored = json.loads(json.dumps(answer))
    doctored["refute"]["tokens"][3] ^= 1
    doctored["choices"][0]["text"] += "!"
    bad = served.api.inbox.call(lambda: check_answer(doctored, game=served.game, model=demo))
    served.stop.wake()
    bad = bad.result(timeout=30)
    assert not bad.matches and not bad.ok
    assert any("tokensHash" in p for p in bad.problems)
    assert any("the text is not" in p for p in bad.problems)


def test_streamed_text_arrives_before_the_claim(served, client, demo) -> None:
    """Deltas come while the generation runs (chunks without a claim yet), join to the text of
    the claimed tokens, and the last chunks carry the finish reason, the claim and the usage."""
    stream = client.completions.create(
        model="demo-chat",
        prompt="The list",
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        stop=["\n\n"],
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    early = [
        c
        for c in chunks
        if c.choices and c.choices[0].text and "claim" not in c.model_extra["refute"]
    ]
    assert len(early) >= 2, "tokens were not streamed as they were generated"
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    ext = final.model_extra["refute"]
    assert len(ext["tokens"]) == 24 and ext["stop"] == ["\n\n"]
    text, reason = answer_text(demo.tokenizer, ext["tokens"], ["\n\n"], eos_token_ids(demo))
    assert "".join(texts) == text and final.choices[0].finish_reason == reason
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].choices == []
    run = _run(DEMO_MODEL_DIR, "The list", 24, 0.0, 0)
    assert ext["tokens"] == run["tokens"] and ext["trace_root"] == run["trace_root"]


def test_chat_completion_uses_the_checkpoint_template(served, client, demo, chat_checkpoint):
    """The prompt claimed is the template rendered and encoded as transformers does it."""
    from transformers import PreTrainedTokenizerFast  # not AutoTokenizer: it imports torch

    messages = [
        {"role": "system", "content": "You write Python docs. "},
        {"role": "user", "content": "Return a new list"},
    ]
    reference = PreTrainedTokenizerFast(
        tokenizer_file=str(chat_checkpoint / "tokenizer.json"),
        chat_template=TEMPLATE,
        eos_token="<|endoftext|>",
    )
    expected = reference.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ChatTemplate.of(load_model(chat_checkpoint)).encode(demo.tokenizer, messages) == list(
        expected
    )
    response = client.chat.completions.create(
        model="demo-chat", messages=messages, max_tokens=6, seed=1
    )
    ext = response.model_extra["refute"]
    assert ext["prompt_tokens"] == list(expected) and 0 in ext["prompt_tokens"]  # eos_token
    text, reason = answer_text(demo.tokenizer, ext["tokens"], (), eos_token_ids(demo))
    message = response.choices[0].message
    assert (message.role, message.content, response.choices[0].finish_reason) == (
        "assistant",
        text,
        reason,
    )
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    with pytest.raises(openai.BadRequestError, match="unknown role tool_x"):
        client.chat.completions.create(
            model="demo-chat", messages=[{"role": "tool_x", "content": "1"}]
        )


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"top_p": 0.9}, ["top_p=0.9"]),
        (
            {"frequency_penalty": 0.5, "presence_penalty": 1},
            ["frequency_penalty=0.5", "presence_penalty=1"],
        ),
        ({"logprobs": 2}, ["logprobs=2"]),
        ({"n": 2}, ["n=2"]),
        ({"best_of": 3, "echo": True}, ["best_of=3", "echo=true"]),
        ({"logit_bias": {"5": 10}}, ["logit_bias="]),
        ({"extra_body": {"top_k": 5}}, ["top_k=5"]),
        ({"extra_body": {"mirostat": 1}}, ["unknown parameters: mirostat"]),
    ],
)
def test_parameters_refute_cannot_honour_are_refused(client, kwargs, names) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo-chat", prompt="If the", max_tokens=2, **kwargs)
    assert info.value.status_code == 400
    for name in names:
        assert name in info.value.message


def test_neutral_values_context_and_model_are_checked(served, client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo-chat", prompt="If the", max_tokens=128)
    message = info.value.message
    assert "needs 129 positions (a prompt of 2 tokens and max_tokens 128" in message
    assert "runs at most 128" in message and info.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.completions.create(model="gpt-4o", prompt="If the", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="stop must be"):
        client.completions.create(model="demo-chat", prompt="If the", stop=["a"] * 5)
    r = httpx.post(served.url + "/v1/completions", content=b"{nope", timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    # the neutral values are accepted (and change nothing)
    response = client.completions.create(
        model="demo-chat",
        prompt=[448, 221],
        max_tokens=2,
        top_p=1,
        presence_penalty=0,
        n=1,
        logprobs=None,
    )
    assert response.model_extra["refute"]["prompt_tokens"] == [448, 221]
    health = httpx.get(served.url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = httpx.get(served.url + "/metrics", timeout=30).text
    assert 'refute_api_requests_total{code="400",endpoint="/v1/completions"}' in metrics
    assert "refute_claims_pending" in metrics


def test_a_full_queue_answers_429(served, client) -> None:
    """--max-queue 1: while one request waits for its claim, the next is refused; a client that
    goes away mid-stream leaves its request to be posted all the same, and the queue frees."""
    body = {"model": "demo-chat", "prompt": "This module", "max_tokens": 90, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", timeout=120, json=body) as r:
        first = next(line for line in r.iter_lines() if line)
        rid = json.loads(first.removeprefix("data: "))["id"]
        with pytest.raises(openai.RateLimitError) as info:
            client.completions.create(model="demo-chat", prompt="If the", max_tokens=2)
    # the stream is closed here, before its claim is posted
    assert info.value.status_code == 429 and "the queue is full (1 requests" in info.value.message
    deadline = time.monotonic() + 60
    while httpx.get(served.url + "/health", timeout=30).json()["api_queue"]:
        assert time.monotonic() < deadline, "the request of the closed stream was never answered"
        time.sleep(0.2)
    assert served.prover.store["requests"][f"id:{rid}"]["status"] == "served"
    response = client.completions.create(model="demo-chat", prompt="If the", max_tokens=2)
    assert len(response.model_extra["refute"]["tokens"]) == 2


def test_a_request_sent_again_with_its_idempotency_key_is_one_claim(served, client) -> None:
    """The same Idempotency-Key names the same request: sent again (by a client whose answer
    was lost), it is answered with the first claim and nothing is posted twice; the key used
    for a different request is a 422, a malformed key a 400, both naming the header."""
    claims = len(served.prover.store["claims"])
    ask = {"model": "demo-chat", "prompt": "If the", "max_tokens": 3, "seed": 2}
    headers = {"Idempotency-Key": "order-7731/attempt"}
    first = client.completions.create(**ask, extra_headers=headers)
    again = client.completions.create(**ask, extra_headers=headers)
    ext, ext2 = first.model_extra["refute"], again.model_extra["refute"]
    assert first.id == again.id and first.id.startswith("cmpl-ik-")
    assert (ext2["claim"], ext2["tx"], ext2["tokens"]) == (ext["claim"], ext["tx"], ext["tokens"])
    assert again.choices[0].text == first.choices[0].text
    assert len(served.prover.store["claims"]) == claims + 1
    # another key is another request, and another claim
    other = client.completions.create(**ask, extra_headers={"Idempotency-Key": "order-7732"})
    assert other.id != first.id and other.model_extra["refute"]["claim"] == ext["claim"] + 1
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.completions.create(**(ask | {"seed": 3}), extra_headers=headers)
    assert info.value.status_code == 422 and "Idempotency-Key" in info.value.message
    assert info.value.code == "idempotency_key_reused"
    assert len(served.prover.store["claims"]) == claims + 2
    r = httpx.post(
        served.url + "/v1/completions", json=ask, headers={"Idempotency-Key": "k" * 256}, timeout=30
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"


# --- a cheating server on anvil ------------------------------------------------------------------


def test_cheating_answer_is_overturned_and_check_fails(anvil_web3: Web3, tmp_path: Path):
    """`refute serve --cheat ... --watch` on anvil with the demo model: the in-process watcher
    disputes the claim and wins; `refute check` exits 1 for the answer (its tokens are the
    claim's, but the claim was overturned) and for a doctored copy of it."""
    url = anvil_web3.provider.endpoint_uri
    serving = start(
        [
            "--rpc",
            url,
            "--port",
            "0",
            "--cheat",
            "2,layers.1.mlp.down,3",
            "--watch",
            "--window",
            "30",
            "--interval",
            "0.3",
            "--state",
            str(tmp_path / "s"),
            "--log-file",
            str(tmp_path / "log"),
        ]
    )
    try:
        client = openai.OpenAI(base_url=serving.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="the model demo has no chat template"):
            client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}]
            )
        response = client.completions.create(model="demo", prompt="If the", max_tokens=4)
        ext = response.model_extra["refute"]
        status = _claim(serving.url, ext["claim"], ("finalized", "overturned"), timeout=120)
    finally:
        serving.close()
    assert status["status"] == "overturned", status
    (dispute,) = status["disputes"]
    assert dispute["winner"] == "challenge" and status["overturned_by"] == dispute["id"]
    answer = tmp_path / "answer.json"
    answer.write_text(response.to_json())
    result = CliRunner().invoke(
        main, ["check", str(answer), "--rpc", url, "--model", "demo", "--json"]
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "overturned" and report["matches"] and not report["ok"]
    assert {"tokens", "text", "trace_root", "model"} <= set(report["checked"])
    doctored = json.loads(answer.read_text())
    doctored["refute"]["prompt_tokens"][0] += 1
    answer.write_text(json.dumps(doctored))
    result = CliRunner().invoke(main, ["check", str(answer), "--rpc", url])
    assert result.exit_code == 1 and "MISMATCH  the answer's prompt tokens" in result.output
    result = CliRunner().invoke(
        main, ["check", "--claim", str(ext["claim"]), "--rpc", url, "--game", ext["game"], "--json"]
    )
    assert result.exit_code == 1 and json.loads(result.stdout)["status"] == "overturned"
    result = CliRunner().invoke(main, ["check", str(answer)])
    assert result.exit_code == 2 and "give --rpc" in result.output
