"""Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) against transformers, on every backend,
one step on chain, and whole disputes over an expert's product and over a routing decision.

The checkpoints are random-init transformers 5 models written inside the test (6 experts, top 2,
hidden 40; Qwen2-MoE in bf16 with its sigmoid-gated shared expert; Qwen3-MoE with
norm_topk_prob and a dense layer from mlp_only_layers). The router's weights are N(0, 0.15)
like the rest, which makes its logits spread by ~1: the experts chosen change from position
to position (asserted), so the data-dependent reads are exercised with different offsets.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

if os.environ.get("REFUTE_TRITON_DEVICE") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before refute.kernels.gpu is imported

from eth_hash.auto import keccak  # noqa: E402
from eth_tester.exceptions import TransactionFailed  # noqa: E402
from web3.exceptions import ContractCustomError  # noqa: E402

from refute.engine import backends  # noqa: E402
from refute.engine.checkpoint import load_model  # noqa: E402
from refute.engine.executor import Executor, Request  # noqa: E402
from refute.engine.ir import Program, Src, node_abi, node_from_abi  # noqa: E402
from refute.errors import ProgramError  # noqa: E402
from tests.test_families import (  # noqa: E402
    Case,
    assert_matches,
    build_hf,
    reference,
    refute_run,
)

_BASE = dict(
    vocab_size=300,
    hidden_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    num_experts_per_tok=2,
)
CASES = {
    "mixtral": Case("mixtral", "Mixtral", dict(_BASE, intermediate_size=36, num_local_experts=6)),
    "qwen2-moe-bf16": Case(
        "qwen2-moe-bf16",
        "Qwen2Moe",
        dict(
            _BASE,
            intermediate_size=40,
            moe_intermediate_size=28,
            shared_expert_intermediate_size=34,
            num_experts=6,
        ),
        dtype="bfloat16",
    ),
    "qwen3-moe": Case(
        "qwen3-moe",
        "Qwen3Moe",
        dict(
            _BASE,
            head_dim=12,
            intermediate_size=40,
            moe_intermediate_size=28,
            num_experts=6,
            norm_topk_prob=True,
            mlp_only_layers=[1],
        ),
    ),
}


def _save(tmp_path: Path, name: str, **changes) -> Path:
    case = CASES[name]
    case = dataclasses.replace(case, kwargs=dict(case.kwargs, **changes))
    directory = tmp_path / name
    build_hf(case).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("name", sorted(CASES))
def test_moe_matches_transformers(name: str, tmp_path: Path) -> None:
    """Logits within tolerance at every position and 32 greedy tokens equal; the routing picks
    two distinct experts everywhere and changes between positions on every routed layer."""
    directory = _save(tmp_path, name)
    model, tokens, logits = refute_run(directory)
    assert_matches(reference(directory, CASES[name].model_class), tokens, logits, name)
    program = model.program
    routed = sorted({n.layer for n in program.nodes if n.name.endswith("moe.topk.0")})
    assert routed == ([0] if name == "qwen3-moe" else [0, 1])  # mlp_only_layers=[1]
    picks = [program.node_index(f"layers.{i}.moe.topk.{j}") for i in routed for j in (0, 1)]
    ex = Executor(model, record=False, capture=tuple(picks))
    (gen,) = ex.generate([Request(prompt=(3, 14, 15, 92), max_new_tokens=20)])
    for i in range(len(routed)):
        first, second = (np.concatenate(gen.captured[n]) for n in picks[2 * i : 2 * i + 2])
        assert np.all(first != second)
        assert len(set(zip(first.tolist(), second.tolist(), strict=True))) >= 4, routed[i]


def test_moe_program_round_trips_and_old_encoding_is_kept(tmp_path: Path) -> None:
    """A selector travels in the operand's index (source + (selector + 1) << 32): the msgpack
    and ABI forms decode to the same nodes, and operands without one encode as before."""
    model = load_model(_save(tmp_path, "mixtral", num_hidden_layers=1))
    p = model.program
    again = Program.from_msgpack(p.to_msgpack())
    assert again.nodes == p.nodes and again.root() == p.root()
    gate = p.nodes[p.node_index("layers.0.moe.expert1.gate")]
    w = gate.operands[1]
    assert w.src == Src.WEIGHT and w.select_node == p.node_index("layers.0.moe.topk.1")
    assert w.as_tuple()[1] == w.index + ((w.select_node + 1) << 32)
    assert node_from_abi(node_abi(gate)) == gate
    x = gate.operands[0]
    assert x.select_node == -1 and x.as_tuple()[1] == x.index


def test_selector_validation(tmp_path: Path) -> None:
    """A selector must be an earlier one-element index node, and a node has at most one."""
    model = load_model(_save(tmp_path, "mixtral", num_hidden_layers=1))
    p = model.program
    g = p.node_index("layers.0.moe.expert0.gate")

    def with_operand(select: int, **changes) -> Program:
        node = p.nodes[g]
        w = dataclasses.replace(node.operands[1], select_node=select, **changes)
        nodes = list(p.nodes)
        nodes[g] = dataclasses.replace(node, operands=(node.operands[0], w))
        return dataclasses.replace(p, nodes=tuple(nodes))

    with pytest.raises(ProgramError, match="not a one-element index node"):
        with_operand(p.node_index("layers.0.moe.router")).validate()
    with pytest.raises(ProgramError, match="not earlier"):
        with_operand(g + 1).validate()
    with pytest.raises(ProgramError, match="reads"):  # expert 5 + 1 rows past the tensor
        with_operand(p.node_index("layers.0.moe.topk.0"), offset=28 * 40).validate()


@pytest.mark.parametrize("name", sorted(CASES))
def test_moe_backends_give_the_reference_trace_root(name: str, tmp_path: Path) -> None:
    """Every record's root is the reference's on the cpu kernels and the Triton kernels in the
    interpreter (the data-dependent products and the routing run there node by node)."""
    model = load_model(_save(tmp_path, name, num_hidden_layers=1))
    requests = [Request((92, 3, 17), 3, temperature=0.8, seed=7)]
    want = Executor(model).generate(requests)
    for backend in ("cpu", "triton"):
        reason = backends.unavailable_reason(backend)
        if reason is not None:
            pytest.skip(f"{backend}: {reason}")
        got = Executor(model, backend=backends.make(backend)).generate(requests)
        for a, b in zip(want, got, strict=True):
            assert b.trace.roots == a.trace.roots, f"{name} on {backend}"
            assert b.output_tokens == a.output_tokens


# --- on chain -----------------------------------------------------------------------------------


def test_moe_steps_verify_on_chain(embedded_web3, tmp_path: Path) -> None:
    """Routing and expert steps on real traces: the router's ARGMAX leaves and root, the mask
    read by the first pick (-inf at the pick), the second pass, the gathered probability and its
    renormalisation, leaves of the selected experts' products (weights opened at the pick's
    offset), Qwen2-MoE's shared-expert gate. The contract computes the engine's value, accepts
    it and rejects it with one bit flipped; a selector proven from another record reverts."""
    from refute.contracts.onestep import OneStepClient, StepProver

    client = OneStepClient(w3=embedded_web3)

    def prove(name: str, steps) -> None:
        model = load_model(_save(tmp_path, name, num_hidden_layers=1))
        ex = Executor(model)
        gen = ex.generate([Request(prompt=(5, 17, 250), max_new_tokens=3, temperature=0.7)])[0]
        prover = StepProver(model, ex, gen)
        ids = {n.name: i for i, n in enumerate(model.program.nodes)}
        out = prover.outputs(3)
        pick = int(out[ids["layers.0.moe.topk.0"]][0])
        masked = out[ids["layers.0.moe.topk.masked1"]].view(np.uint32)
        assert masked[pick] == 0xFF800000  # the first pick removed from the second pass
        for call in steps(prover, ids, pick):
            node = model.program.nodes[call.node]
            assert client.compute(call) == (call.value, call.index), node.name
            assert client.verify(call), node.name
            assert not client.verify(call, value=call.value ^ 1), node.name
            if node.name.endswith(".topk.0") or node.name.endswith(".topk.1"):
                assert not client.verify(call, index=call.index ^ 1), node.name
        return prover, ids

    def mixtral_steps(prover, ids, pick):
        t = 3
        other = (pick + 1) % 6
        return [
            prover.step(t, ids["layers.0.moe.topk.0"], 0, leaf=pick),
            prover.step(t, ids["layers.0.moe.topk.0"], 0, leaf=7),  # padding of 6 -> 8
            prover.step(t, ids["layers.0.moe.topk.0"], 0, level=3, index=0),  # the pick
            prover.step(t, ids["layers.0.moe.topk.masked1"], pick),  # + mask: -inf
            prover.step(t, ids["layers.0.moe.topk.masked1"], other),  # + 0
            prover.step(t, ids["layers.0.moe.topk.1"], 0, leaf=other),
            prover.step(t, ids["layers.0.moe.topk.1"], 0, level=2, index=1),
            prover.step(t, ids["layers.0.moe.topk.0.prob"], 0),  # probs[pick]
            prover.step(t, ids["layers.0.moe.topk.1.weight"], 0),
            prover.step(t, ids["layers.0.moe.expert0.gate"], 11, leaf=23),
            prover.step(t, ids["layers.0.moe.expert1.up"], 35, leaf=0),
            prover.step(t, ids["layers.0.moe.expert1.down"], 39, leaf=35),
            prover.step(2, ids["layers.0.moe.expert0.weighted"], 17),
            prover.step(2, ids["layers.0.moe.sum1"], 17),
        ]

    prover, ids = prove("mixtral", mixtral_steps)
    # the first expert's product with the selector proven from the second pick's record
    call = prover.step(3, ids["layers.0.moe.expert0.gate"], 11, leaf=23)
    ctx, node, step, sources, _ = call.args
    forged = prover.record_source(3, ids["layers.0.moe.topk.1"], prover.outputs(3)[
        ids["layers.0.moe.topk.1"]], 0)  # fmt: skip
    call.args = (ctx, node, step, sources, forged)
    with pytest.raises((ContractCustomError, TransactionFailed)) as info:
        client.compute(call)
    assert keccak(b"RootMismatch(bytes32,bytes32)")[:4] in repr(info.value).encode("latin-1")

    def qwen2_steps(prover, ids, pick):
        return [
            prover.step(3, ids["layers.0.moe.expert1.gate"], 27, leaf=39),
            prover.step(3, ids["layers.0.moe.topk.1.prob"], 0),  # no renormalisation
            prover.step(3, ids["layers.0.moe.shared.sigmoid"], 0),
            prover.step(3, ids["layers.0.moe.shared.weighted"], 5),
            prover.step(3, ids["layers.0.moe.shared.add"], 5),
        ]

    prove("qwen2-moe-bf16", qwen2_steps)


# --- whole disputes -----------------------------------------------------------------------------


def test_disputes_end_in_an_expert_product_and_in_a_routing_decision(
    embedded_web3, tmp_path: Path
) -> None:
    """A prover that computes with one bit of a routed expert's weights flipped, and one that
    flips the second expert chosen at a position, both lying consistently down to the leaf,
    are overturned by the honest watcher in one step verified on chain: the first at a leaf of
    the flipped row of that expert's product, the second at a leaf of the routing ARGMAX."""
    from refute.bisection.challenger import Challenger
    from refute.bisection.demo import flip_bit
    from refute.bisection.prover import Prover
    from refute.contracts.game import ClaimStatus, GameClient, GameParams
    from tests.test_bisection import run

    params = GameParams(claim_bond=10**18, challenge_bond=5 * 10**17, move_bond=10**15)
    request = Request(prompt=(5, 17, 250, 3), max_new_tokens=3, temperature=0.9, seed=11)
    model = load_model(_save(tmp_path, "mixtral", num_hidden_layers=1))
    p = model.program
    honest = Executor(model, record=False, capture=(p.node_index("layers.0.moe.topk.0"),))
    (gen,) = honest.generate([request])
    t = 4
    expert = int(gen.captured[p.node_index("layers.0.moe.topk.0")][t][0])
    # the first position at which that expert is picked in either slot: where a lie must show
    gate = p.nodes[p.node_index("layers.0.moe.expert0.gate")]
    w = gate.operands[1].index
    weights = [np.array(x, copy=True) for x in model.weights]
    f, d = 36, 40
    weights[w].reshape(-1).view(np.uint32)[expert * f * d + 5 * d + 7] ^= 1 << 20
    bad_weights = dataclasses.replace(model, weights=weights, _tensor_roots=None)
    topk1 = p.node_index("layers.0.moe.topk.1")
    liars = {
        "expert": Executor(bad_weights),
        "routing": Executor(model, tamper=flip_bit((t, topk1, 0))),
    }
    acc = embedded_web3.eth.accounts
    for k, (kind, executor) in enumerate(liars.items()):
        game = GameClient.deploy(w3=embedded_web3, params=params)
        game.register(model)
        cheater = Prover(game, model, tmp_path / f"c{k}", acc[1], executor=executor,
                         consistent_lies=True)  # fmt: skip
        watcher = Challenger(game, model, tmp_path / f"w{k}", acc[2])
        cid = cheater.claim(request)
        run(cheater, watcher)
        ((did, info),) = watcher.disputes.items()
        assert info["winner"] == "challenge" and game.claim(cid).status == ClaimStatus.OVERTURNED
        # ended by the one step, on chain, finding the claim wrong (not by a timeout, nor by
        # the cheater's own children failing to combine)
        assert info["levels"] == [1, 2, 3] and watcher.moves[-1]["fn"] == "step"
        (verified,) = game.events("StepVerified", info["block"], disputeId=int(did))
        assert verified["claimCorrect"] is False
        end = info["end"]
        if kind == "expert":
            assert end["node"].startswith("layers.0.moe.expert") and ".gate" in end["node"]
            assert end["op"] == "reduce sum" and end["element"] == 5
            assert end["claim_value"] != end["challenge_value"]
        else:
            # the cheater's fabricated (value, index) pairs lead down to one leaf of the second
            # pick's ARGMAX, which the verifier recomputes from the masked router logits
            assert (end["position"], end["node"], end["op"]) == (t, "layers.0.moe.topk.1",
                                                                 "reduce argmax")  # fmt: skip
            assert (end["claim_value"], end["claim_index"]) != (
                end["challenge_value"],
                end["challenge_index"],
            )
            assert end["challenge_index"] == end["leaf"]
