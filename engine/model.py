"""A model: config, program and weights, and the roots that commit to them (docs/commitments.md).

model root = sha256(0x12 || spec version || weights root || program root || program header hash
|| config hash), where the weights root lists sha256(0x11 || abi.encode(name, shape) || tensor
root) for every weight in program order, the program header hash is
sha256(abi.encode(uint64 nodes, uint64 max_positions, uint64 vocab_size, uint64 logits node,
uint64 token node)) and the config hash is sha256 of the config's canonical JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from eth_abi import encode as abi_encode

from refute.engine import merkle
from refute.engine.ir import Program
from refute.engine.models import Config, config_dict
from refute.engine.weights import admit, is_narrow, widen, widened_blocks
from refute.kernels.reference import SPEC_VERSION


def weight_leaf(name: str, shape: tuple[int, ...], root: bytes) -> bytes:
    return merkle.sha256(b"\x11", abi_encode(["string", "uint64[]"], [name, list(shape)]), root)


_WIDEN_BLOCK = 1 << 24  # values widened and hashed at a time (64 MiB of binary32; chunk-aligned)


def weight_root(w: np.ndarray) -> bytes:
    """The tensor root of a weight's binary32 values (docs/commitments.md), whatever its stored
    width: a bf16/fp16 weight is widened a block at a time and its chunks hashed as they come,
    so the widened tensor never exists whole."""
    if not is_narrow(w) or w.size <= _WIDEN_BLOCK:
        return merkle.tensor_root(widen(w))
    leaves: list[bytes] = []
    for block in widened_blocks(w, _WIDEN_BLOCK):
        leaves += merkle.chunk_leaves(memoryview(block).cast("B"))
    return merkle.bind_tensor(merkle.DTYPE_F32, w.size, merkle.tree_root(leaves))


@dataclass
class Model:
    name: str
    config: Config
    program: Program
    weights: list[np.ndarray]
    tokenizer: Any = None  # a `tokenizers.Tokenizer` when the checkpoint ships one
    context_note: str = ""  # why max_positions is what it is (named when a request exceeds it)
    _tensor_roots: list[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # at their stored width (a memory map stays one); committed data holds only the
        # canonical NaN (engine/weights.py)
        self.weights = [admit(w) for w in self.weights]

    @property
    def config_json(self) -> str:
        return json.dumps(config_dict(self.config), sort_keys=True, separators=(",", ":"))

    @cached_property
    def config_hash(self) -> bytes:
        return merkle.sha256(self.config_json.encode())

    @property
    def tensor_roots(self) -> list[bytes]:
        if self._tensor_roots is None:
            self._tensor_roots = [weight_root(w) for w in self.weights]
        return self._tensor_roots

    @cached_property
    def weight_leaves(self) -> list[bytes]:
        return [
            weight_leaf(spec.name, spec.shape, root)
            for spec, root in zip(self.program.weights, self.tensor_roots, strict=True)
        ]

    @cached_property
    def weights_root(self) -> bytes:
        return merkle.list_root(self.weight_leaves)

    @cached_property
    def program_root(self) -> bytes:
        return self.program.root()

    @cached_property
    def program_header_hash(self) -> bytes:
        """Binds what the verifier takes on trust from the registry: the number of nodes per
        position, max positions, vocabulary size, and which nodes give logits and tokens."""
        p = self.program
        fields = [len(p.nodes), p.max_positions, p.vocab_size, p.logits_node, p.token_node]
        return merkle.sha256(abi_encode(["uint64"] * 5, fields))

    @cached_property
    def root(self) -> bytes:
        return merkle.sha256(
            b"\x12",
            SPEC_VERSION.to_bytes(4, "big"),
            self.weights_root,
            self.program_root,
            self.program_header_hash,
            self.config_hash,
        )

    @property
    def num_parameters(self) -> int:
        return int(sum(w.size for w in self.weights))

    @property
    def weight_bytes(self) -> int:
        """Bytes the weights occupy as held (stored width)."""
        return int(sum(w.nbytes for w in self.weights))
