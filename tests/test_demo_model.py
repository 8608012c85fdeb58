"""The shipped demo checkpoint (refute/data/demo/, trained by scripts/train_demo_model.py):
it loads, commits to a fixed model root, writes the recorded text greedily, and computes what
transformers computes."""

from __future__ import annotations

import numpy as np
import pytest

from refute.demo_model import DEMO_MODEL_DIR, DEMO_PROMPT
from refute.engine.checkpoint import load_model
from refute.engine.executor import Executor, Request

# Recorded from the committed checkpoint (refute's canonical arithmetic is bit-exact, so these
# change only if the checkpoint, the program builder or the spec changes).
MODEL_ROOT = "f1340b352b1d869086e76b2f412d28127b39cb63989ee39956527e788ee317ac"
NEW_TOKENS = 24
GREEDY_TEXT = (
    " string containing the string.\n\nThe default is None, if the string is present, the"
    " string is\n"
)
# refute vs transformers' fp32 eager forward: |difference| <= REL_TOL * max|logit| per position
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return load_model(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def greedy(model):
    """refute's greedy run from the demo prompt: (prompt ids, output ids, logits per position)."""
    prompt = tuple(model.tokenizer.encode(DEMO_PROMPT).ids)
    ex = Executor(model, record=False, capture=(model.program.logits_node,))
    (gen,) = ex.generate([Request(prompt=prompt, max_new_tokens=NEW_TOKENS)])
    return prompt, gen.output_tokens, np.stack(gen.captured[model.program.logits_node])


def test_checkpoint_is_small_and_complete() -> None:
    names = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) < 8 * 2**20


def test_model_root_is_stable(model) -> None:
    assert model.tokenizer is not None
    assert model.root.hex() == MODEL_ROOT


def test_greedy_text_is_recorded(model, greedy) -> None:
    _, tokens, _ = greedy
    assert len(tokens) == NEW_TOKENS
    assert model.tokenizer.decode(tokens) == GREEDY_TEXT


def test_logits_match_transformers(greedy) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    hf = transformers.LlamaForCausalLM.from_pretrained(
        DEMO_MODEL_DIR, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    prompt, tokens, logits = greedy
    sequence = list(prompt) + tokens
    with torch.no_grad():
        expected = hf(torch.tensor([sequence[: len(logits)]])).logits[0].numpy()
    assert logits.shape == expected.shape
    for position, (ours, theirs) in enumerate(zip(logits, expected, strict=True)):
        diff = float(np.abs(ours - theirs).max())
        bound = REL_TOL * float(np.abs(theirs).max())
        assert diff <= bound, f"position {position}: |refute - torch| {diff:.3g} > {bound:.3g}"
    # and the greedy choices are transformers' argmax at every generated position
    assert tokens == expected[len(prompt) - 1 :].argmax(axis=1).tolist()
