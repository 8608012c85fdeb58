"""The command line: JSON for scripts, readable errors for people."""

from __future__ import annotations

import json

from click.testing import CliRunner

from refute.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_run_json_has_tokens_and_roots() -> None:
    result = invoke(
        "run", "--model", "tiny-gpt2", "--prompt-tokens", "1,2,3", "--max-new-tokens", "4", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["tokens"]) == 4
    for key in ("trace_root", "model_root", "program_root", "weights_root", "prompt_root"):
        assert out[key].startswith("0x") and len(out[key]) == 66
    assert out["records"] == 95 * 6
    assert out["timings"]["generate_s"] > 0


def test_run_is_deterministic_and_sampling_depends_on_seed() -> None:
    args = [
        "run",
        "--prompt-tokens",
        "7,7",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1",
        "--json",
    ]
    a, b = (json.loads(invoke(*args, "--seed", "5").stdout) for _ in range(2))
    c = json.loads(invoke(*args, "--seed", "6").stdout)
    assert a["trace_root"] == b["trace_root"] and a["tokens"] == b["tokens"]
    assert a["trace_root"] != c["trace_root"]


def test_run_errors_are_clear() -> None:
    bad_token = invoke("run", "--prompt-tokens", "1,99999")
    assert bad_token.exit_code != 0 and "outside the vocabulary" in bad_token.output
    unknown = invoke("run", "--model", "no-such-model")
    assert unknown.exit_code != 0 and "neither a built-in model" in unknown.output
    garbled = invoke("run", "--prompt-tokens", "1,x")
    assert garbled.exit_code != 0 and "comma-separated" in garbled.output
    no_tokenizer = invoke("run", "--prompt", "hello")
    assert no_tokenizer.exit_code != 0 and "no tokenizer" in no_tokenizer.output


def test_conformance_json_reports_all_match() -> None:
    result = invoke("conformance", "--json", "--stride", "1000003")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] and out["spec_version"] == 1
    assert all(r["passed"] == r["cases"] for r in out["results"].values())


def test_backends_agree_and_unavailable_ones_are_named(monkeypatch) -> None:
    from refute.engine import backends

    args = ["run", "--prompt-tokens", "3,1,4", "--max-new-tokens", "3", "--json"]
    # stdout only: a first `cpu` run says on stderr that it compiles its kernels
    roots = {b: json.loads(invoke(*args, "--backend", b).stdout)["trace_root"]
             for b in ("reference", "cpu")}  # fmt: skip
    assert roots["reference"] == roots["cpu"]
    assert json.loads(invoke(*args).stdout)["backend"] == backends.default_name()
    monkeypatch.setattr(backends, "unavailable_reason", lambda name: "no CUDA device here")
    result = invoke(*args, "--backend", "triton")
    assert result.exit_code != 0 and "cannot run here: no CUDA device here" in result.output


def test_verify_step_on_the_embedded_chain_and_on_anvil(anvil_web3) -> None:
    embedded = json.loads(
        invoke(
            "verify-step", "--node", "mlp.silu".join(["layers.1.", ""]), "--element", "7", "--json"
        ).output
    )
    assert embedded["ok"] and embedded["step"] == "map" and embedded["gas"] < 300_000
    url = anvil_web3.provider.endpoint_uri
    node = json.loads(
        invoke(
            "verify-step",
            "--model",
            "tiny-gpt2",
            "--node",
            "sample",
            "--leaf",
            "17",
            "--temperature",
            "0.8",
            "--seed",
            "9",
            "--rpc",
            url,
            "--json",
        ).output
    )
    assert node["ok"] and node["chain"] == url and node["step"] == "sample_leaf"
