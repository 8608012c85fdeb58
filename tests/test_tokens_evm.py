"""The claim's token range check (contracts/sol/Tokens.sol, eight tokens a word) on the embedded
chain: against a plain Python loop for any tokens and vocabulary size, on calldata whose
padding is not zero, and the gas of `postClaim` at a full 4,096-position context."""

from __future__ import annotations

import numpy as np
import pytest
from eth_abi import decode, encode
from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3

from refute.contracts.chain import deploy
from refute.contracts.game import GameClient, encode_tokens, revert_data
from refute.engine import merkle
from refute.kernels.reference import SPEC_VERSION

SELECTOR = Web3.keccak(text="TokenOutOfRange(uint256,uint256)")[:4]
CHECK = Web3.keccak(text="checkTokens(bytes,bytes,uint256)")[:4]
VOCABS = [1, 2, 255, 256, 32000, 65536, 128256, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**64 - 1]


@pytest.fixture(scope="module")
def reader(embedded_web3: Web3):
    return deploy(embedded_web3, "NodeReader")


def first_bad(tokens: list[int], vocab: int) -> int | None:
    return next((t for t in tokens if t >= vocab), None)


def verdict(w3: Web3, address: str, calldata: bytes, vocab: int) -> int | None:
    """None if checkTokens returns, else the token its TokenOutOfRange names (with `vocab`)."""
    try:
        w3.eth.call({"to": address, "data": calldata})
    except Exception as exc:  # web3 and eth-tester raise different types; the data decides
        raw = revert_data(exc)
        assert raw[:4] == SELECTOR, (exc, raw)
        token, named = decode(["uint256", "uint256"], raw[4:])
        assert named == vocab
        return token
    return None


def _calldata(prompt: bytes, output: bytes, vocab: int) -> bytes:
    return CHECK + encode(["bytes", "bytes", "uint256"], [prompt, output, vocab])


def _near(vocab: int):
    """Tokens around the boundary as often as anywhere else."""
    top = 2**32 - 1
    edge = st.integers(min(top, max(0, vocab - 3)), min(top, vocab + 2))
    return st.one_of(st.integers(0, 2**32 - 1), edge, st.integers(0, min(vocab, 2**32) - 1))


@st.composite
def claims(draw):
    vocab = draw(st.one_of(st.sampled_from(VOCABS), st.integers(1, 2**64 - 1)))
    tokens = st.lists(_near(vocab), max_size=40)
    return draw(tokens), draw(tokens), vocab


@given(claims())
def test_range_check_matches_a_loop(embedded_web3: Web3, reader, claim) -> None:
    prompt, output, vocab = claim
    want = first_bad(prompt, vocab)
    want = first_bad(output, vocab) if want is None else want
    calldata = _calldata(encode_tokens(prompt), encode_tokens(output), vocab)
    assert verdict(embedded_web3, reader.address, calldata, vocab) == want


@pytest.mark.parametrize("count", [1, 7, 8, 9, 15])
def test_bytes_after_the_tokens_are_not_tokens(embedded_web3: Web3, reader, count: int) -> None:
    """A hand-made encoding whose padding after the prompt's last token is 0xFF (the ABI decoder
    does not require zero padding): the check reads only the tokens."""
    vocab = 1000
    prompt = encode_tokens(list(range(count)))
    calldata = bytearray(_calldata(prompt, encode_tokens([3]), vocab))
    start = 4 + 32 * 3 + 32  # the prompt's data: after the head and its length word
    padded = -len(prompt) % 32
    calldata[start + len(prompt) : start + len(prompt) + padded] = b"\xff" * padded
    assert verdict(embedded_web3, reader.address, bytes(calldata), vocab) is None
    bad = encode_tokens([*range(count - 1), vocab])
    calldata[start : start + len(bad)] = bad
    assert verdict(embedded_web3, reader.address, bytes(calldata), vocab) == vocab


def test_post_claim_gas_at_4096_positions(embedded_web3: Web3) -> None:
    """Issue 11's bound: a claim of 3,585 prompt and 512 output tokens (Llama-2's whole
    context) is posted for at most 1M gas (1.21M with the token-by-token check)."""
    game = GameClient.deploy(w3=embedded_web3)
    w = merkle.sha256
    root, _ = game.transact(
        game.registry, "register", w(b"weights"), w(b"program"), w(b"config"), SPEC_VERSION,
        700, 4096, 32000, 5, 6,
    )  # fmt: skip
    rng = np.random.default_rng(4096)
    prompt, output = rng.integers(0, 32000, 3585), rng.integers(0, 32000, 512)
    positions = 3585 + 512 - 1
    _, receipt = game.transact(
        game.game, "postClaim", bytes(root), encode_tokens(prompt), 0, 1, encode_tokens(output),
        bytes(32), 700 * positions, value=game.claim_value(positions),
    )  # fmt: skip
    assert 600_000 < receipt["gasUsed"] <= 800_000
    claim = game.claim(0)
    assert claim.prompt_root == merkle.tensor_root(prompt.astype(np.uint32))
