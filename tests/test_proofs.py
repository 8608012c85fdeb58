"""Any element of any traced tensor opens against the trace root, and nothing else does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refute.engine import merkle
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.engine.trace import verify_record


@pytest.fixture(scope="module")
def run():
    model = load_model("tiny-llama")
    executor = Executor(model)
    (gen,) = executor.generate([Request((2, 7, 1, 8), 4)])
    return model, executor, gen


@settings(max_examples=25)
@given(data=st.data())
def test_element_of_a_record_opens_against_the_trace_root(run, data) -> None:
    _, executor, gen = run
    trace = gen.trace
    t = data.draw(st.integers(0, trace.positions - 1))
    n = data.draw(st.integers(0, trace.nodes_per_position - 1))
    tensor = executor.recompute(gen, t)[n]
    i = data.draw(st.integers(0, tensor.size - 1))
    root = trace.roots[t][n]
    proof = trace.record_proof(t, n)
    args = (trace.root(), trace.num_records, trace.nodes_per_position)
    assert verify_record(*args, t, n, root, proof)
    element = merkle.prove_element(tensor, i)
    assert merkle.verify_element(root, element)
    assert element.value_bits == int(tensor.view("<u4")[i])
    # the same proof does not vouch for another record, root or position
    other = (n + 1) % trace.nodes_per_position
    assert not verify_record(*args, t, other, root, proof) or trace.roots[t][other] == root
    assert not verify_record(*args, t, n, bytes(32), proof)
    assert not verify_record(*args, (t + 1) % trace.positions, n, root, proof)
    assert not verify_record(
        trace.root(), trace.num_records + 1, trace.nodes_per_position, t, n, root, proof
    )


def test_weight_elements_open_against_the_model_root(run) -> None:
    model, _, _ = run
    for w in (0, 5, len(model.weights) - 1):
        leaves = model.weight_leaves
        proof = merkle.tree_proof(leaves, w)
        assert merkle.verify_list_item(model.weights_root, len(leaves), w, leaves[w], proof)
        element = merkle.prove_element(model.weights[w], model.weights[w].size - 1)
        assert merkle.verify_element(model.tensor_roots[w], element)


def test_model_root_binds_every_part(run) -> None:
    """Changing any committed part — a weight, a node, the program header, the config — moves
    the model root."""
    import dataclasses

    from refute.engine.model import Model

    model = run[0]
    base = model.root
    weights = [w.copy() for w in model.weights]
    weights[3].reshape(-1)[0] += 1
    variants = [
        Model(model.name, model.config, model.program, weights),
        Model(
            model.name,
            model.config,
            dataclasses.replace(model.program, logits_node=0),
            model.weights,
        ),
        Model(
            model.name,
            dataclasses.replace(model.config, rms_eps=1e-6),
            model.program,
            model.weights,
        ),
        Model(
            model.name,
            model.config,
            dataclasses.replace(model.program, nodes=model.program.nodes[::-1]),
            model.weights,
        ),
    ]
    assert len({base, *(v.root for v in variants)}) == 1 + len(variants)
    assert Model(model.name, model.config, model.program, model.weights).root == base
