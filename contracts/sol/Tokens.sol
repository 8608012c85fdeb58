// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

/// @title Tokens: the range check of token lists given as uint32 tensor data (4-byte
///        little-endian words, docs/commitments.md), shared by the game and the oracle.
/// @dev Invariant T1 (exact): `checkRange` reverts exactly when some token is >= vocab, naming
///      the first such token.
library Tokens {
    /// @notice A token is not below the vocabulary size.
    error TokenOutOfRange(uint256 token, uint256 vocabSize);

    /// @notice Revert with TokenOutOfRange unless every token is < vocab (vocab > 0, the
    ///         registry's check; any vocab above 2^32 admits every token).
    /// @dev Eight tokens a word: the 4-byte lanes are byte-swapped to big-endian at once and
    ///      split into two words of four 64-bit units; a unit of 2^32 + (vocab - 1) - token
    ///      keeps bit 32 set exactly when token < vocab, and no subtraction borrows across
    ///      units. Under 30 gas a token with the call into NodeReader, where a loop over single
    ///      tokens cost about 150 (600k gas at a 4,096-token context). A failing word is searched token by token for the
    ///      first bad one (the revert path only); the search decides, so a fast test that
    ///      failed a good word would cost gas, never a wrong verdict.
    function checkRange(bytes calldata tokens, uint256 vocab) internal pure {
        uint256 bad = type(uint256).max;
        assembly ("memory-safe") {
            let ones64 := 0x0000000000000001000000000000000100000000000000010000000000000001
            let ones32 := or(ones64, shl(32, ones64))
            let m8 := mul(0xFF, or(ones32, shl(16, ones32)))
            let m16 := mul(0xFFFF, ones32)
            let m32 := mul(0xFFFFFFFF, ones64)
            let top := shl(32, ones64) // bit 32 of every 64-bit unit
            let most := sub(vocab, 1)
            if gt(most, 0xFFFFFFFF) { most := 0xFFFFFFFF }
            let bound := or(top, mul(most, ones64))
            let end := add(tokens.offset, tokens.length)
            for { let p := tokens.offset } lt(p, end) { p := add(p, 32) } {
                let w := calldataload(p)
                // past the end: whatever calldata follows, read as tokens 0
                if lt(sub(end, p), 32) { w := and(w, not(shr(shl(3, sub(end, p)), not(0)))) }
                w := or(and(shr(8, w), m8), shl(8, and(w, m8)))
                w := or(and(shr(16, w), m16), shl(16, and(w, m16)))
                let ok := and(sub(bound, and(w, m32)), sub(bound, and(shr(32, w), m32)))
                if iszero(eq(and(ok, top), top)) {
                    for { let i := 0 } lt(i, 8) { i := add(i, 1) } {
                        let t := and(shr(sub(224, shl(5, i)), w), 0xFFFFFFFF)
                        if iszero(lt(t, vocab)) {
                            bad := t
                            break
                        }
                    }
                    if iszero(not(bad)) { continue } // no bad token: the next word
                    break
                }
            }
        }
        if (bad != type(uint256).max) revert TokenOutOfRange(bad, vocab);
    }
}
