"""Gas of `postClaim` by prompt length, and where it goes at the largest (not CI).

    python bench/post_claim_gas.py [PROMPT ...]     # default: 1 512 3585 prompt tokens

On a private anvil with step tracing: a model of 4,096 positions and a 32,000-token vocabulary
is registered, then for each prompt length a claim of that many random tokens and 512 output
tokens is posted. Prints the gas used and, for the last length, the gas of the opcodes executed
more than 1,000 times (the per-token loops) and of the storage writes and the log.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from refute.contracts.anvil import start_anvil
from refute.contracts.chain import connect
from refute.contracts.game import GameClient, encode_tokens
from refute.engine.merkle import sha256
from refute.kernels.reference import SPEC_VERSION

OUTPUT, NODES, VOCAB = 512, 700, 32000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompts", nargs="*", type=int, default=[1, 512, 3585])
    args = parser.parse_args()
    with start_anvil(extra_args=["--steps-tracing"]) as url:
        w3 = connect(url)
        game = GameClient.deploy(w3=w3)
        root, _ = game.transact(
            game.registry, "register", sha256(b"w"), sha256(b"p"), sha256(b"c"), SPEC_VERSION,
            NODES, 4096, VOCAB, 5, 6,
        )  # fmt: skip
        rng = np.random.default_rng(1)
        print(f"{'prompt + output':>16} {'calldata bytes':>14} {'gas used':>10}")
        for prompt in args.prompts:
            positions = prompt + OUTPUT - 1
            f = game.game.functions.postClaim(
                bytes(root), encode_tokens(rng.integers(0, VOCAB, prompt)), 0, 1,
                encode_tokens(rng.integers(0, VOCAB, OUTPUT)), bytes(32), NODES * positions,
            )  # fmt: skip
            tx = {"from": w3.eth.accounts[1], "value": game.claim_value(positions)}
            sent = f.transact({**tx, "gas": int(f.estimate_gas(tx)) + 100_000})
            receipt = w3.eth.wait_for_transaction_receipt(sent)
            size = len(w3.eth.get_transaction(sent)["input"])
            print(f"{f'{prompt} + {OUTPUT}':>16} {size:>14,} {receipt['gasUsed']:>10,}")
        trace = w3.provider.make_request(
            "debug_traceTransaction", [sent.to_0x_hex(), {"disableStack": True}]
        )["result"]["structLogs"]
        by_op: collections.Counter = collections.Counter()
        runs: collections.Counter = collections.Counter()
        for step in trace:
            runs[(step["depth"], step["pc"])] += 1
        loops = 0
        for step in trace:
            if step["op"] not in ("CALL", "STATICCALL"):  # their cost includes the callee's
                by_op[step["op"]] += step["gasCost"]
                if runs[(step["depth"], step["pc"])] > 1000:
                    loops += step["gasCost"]
        print(f"last claim: SSTORE {by_op['SSTORE']:,}, LOG4 {by_op['LOG4']:,}, "
              f"opcodes run > 1,000 times {loops:,}")  # fmt: skip


if __name__ == "__main__":
    main()
