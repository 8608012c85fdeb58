"""The IR: deterministic serialization, validation, and per-element semantics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refute.engine import ir, steps
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request
from refute.errors import ProgramError

MODELS = ("tiny-llama", "tiny-gpt2")


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return load_model(request.param)


def test_program_serializes_deterministically(model) -> None:
    blob = model.program.to_msgpack()
    again = ir.Program.from_msgpack(blob)
    assert again.to_msgpack() == blob
    assert again.root() == model.program.root()
    assert load_model(model.name.split("@")[0]).program.to_msgpack() == blob


def test_node_abi_roundtrip(model) -> None:
    for node in model.program.nodes:
        assert ir.node_from_abi(ir.node_abi(node)) == node


def _with_node(program: ir.Program, i: int, node: ir.Node) -> ir.Program:
    nodes = list(program.nodes)
    nodes[i] = node
    return dataclasses.replace(program, nodes=tuple(nodes))


def test_validation_rejects_malformed_programs(model) -> None:
    p = model.program
    i = next(j for j, n in enumerate(p.nodes) if n.op == ir.Op.REDUCE and n.fn == ir.Fn.MUL)
    node = p.nodes[i]
    op0 = node.operands[0]
    cases = {
        "not earlier": dataclasses.replace(
            node, operands=(dataclasses.replace(op0, src=ir.Src.NODE, index=i), node.operands[1])
        ),
        "strides": dataclasses.replace(
            node, operands=(dataclasses.replace(op0, strides=op0.strides[:-1]), node.operands[1])
        ),
        "reads": dataclasses.replace(
            node, operands=(dataclasses.replace(op0, offset=op0.offset + 10**6), node.operands[1])
        ),
        "operands": dataclasses.replace(node, operands=node.operands[:1]),
        "reducer": dataclasses.replace(node, reducer=ir.Reducer.NONE),
    }
    for message, bad in cases.items():
        with pytest.raises(ProgramError, match=message):
            _with_node(p, i, bad).validate()
    with pytest.raises(ProgramError, match="not a serialized program"):
        ir.Program.from_msgpack(b"\xc1garbage")
    with pytest.raises(ProgramError, match="version"):
        ir.Program.from_msgpack(ir.msgpack.packb([99, [], [], 1, 1, 0, 0]))


@pytest.fixture(scope="module")
def runs():
    out = {}
    for name in MODELS:
        model = load_model(name)
        request = Request((3, 1, 4, 1, 5), 4, temperature=0.8, seed=11)
        (gen,) = Executor(model).generate([request])
        out[name] = (model, gen)
    return out


@settings(max_examples=40)
@given(name=st.sampled_from(MODELS), data=st.data())
def test_every_element_is_its_scalar_steps(runs, name: str, data) -> None:
    """Recomputing a random element of a random record from scalar reads of its operands (as
    the one-step verifier will) gives the executor's bits."""
    model, gen = runs[name]
    executor = Executor(model)
    t = data.draw(st.integers(0, gen.trace.positions - 1), label="position")
    node_id = data.draw(st.integers(0, len(model.program.nodes) - 1), label="node")
    outputs = executor.recompute(gen, t)
    size = outputs[node_id].size
    element = data.draw(st.integers(0, size - 1), label="element")
    node = model.program.nodes[node_id]
    previous = executor.recompute(gen, t - 1)[node_id] if t > 0 else None

    def read(i: int, flat: int):
        op = node.operands[i]
        if op.src == ir.Src.CONST:
            return np.uint32(op.index).view(np.float32)
        src = outputs[op.index] if op.src == ir.Src.NODE else model.weights[op.index].reshape(-1)
        return src[flat]

    value = steps.element_value(
        model.program,
        node_id,
        element,
        t,
        gen.tokens[t],
        read,
        previous=(lambda e: previous[e]) if previous is not None else None,
        temperature=gen.request.temperature,
        seed=gen.request.seed,
    )
    got = outputs[node_id][element]
    if node.outputs_index:
        assert int(value) == int(got)
    else:
        assert np.float32(value).view(np.uint32) == np.float32(got).view(np.uint32)


def test_reduction_tree_levels() -> None:
    levels = steps.reduction_tree(ir.Reducer.SUM, [np.float32(v) for v in (1, 2, 3)])
    assert [len(level) for level in levels] == [4, 2, 1]
    assert levels[-1][0] == 6 and levels[0][3] == 0
    arg = steps.reduction_tree(ir.Reducer.ARGMAX, [np.float32(v) for v in (1, 5, 5)])
    assert arg[-1][0] == (5, 1)
