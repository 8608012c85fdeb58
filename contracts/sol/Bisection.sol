// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {MerkleProofs} from "./MerkleProofs.sol";

/// @title Bisection: the pure pieces of the dispute game (docs/protocol.md section 3).
/// @notice Tensor roots of token lists and chunk comparison (NodeReader holds the node shape and
///         the reduction combine step, kept out of DisputeGame's code size).
/// @dev Invariants:
///      - B1 (same commitments): `tokenRoot` equals `refute.engine.merkle.tensor_root` of the
///        uint32 tokens (1 KiB chunks, tags 0x00 / 0x01 / 0x02, EMPTY padding leaves).
///      - B3 (bounded): loops run over calldata (tokens, one chunk) or the node's rank.
library Bisection {
    /// @notice Tensor root of uint32 tokens given as their tensor data: 4-byte little-endian
    ///         words (`merkle.tensor_root(np.uint32 array)`); `data.length` is a multiple of 4.
    function tokenRoot(bytes calldata data) internal view returns (bytes32) {
        uint256 n = data.length / 4;
        uint256 chunks = (data.length + 1023) / 1024;
        bytes32[] memory level = new bytes32[](chunks == 0 ? 1 : chunks);
        bytes memory buf = new bytes(1025); // tag byte 0x00, then one chunk
        for (uint256 c; c < chunks; ++c) {
            uint256 from = c * 1024;
            uint256 size = data.length - from < 1024 ? data.length - from : 1024;
            bytes32 h;
            assembly ("memory-safe") {
                let p := add(buf, 33)
                calldatacopy(p, add(data.offset, from), size)
                // zero padding after the last token (the tag 0x00 at p - 1 stays zero)
                calldatacopy(add(p, size), calldatasize(), sub(1024, size))
                if iszero(staticcall(gas(), 0x02, add(buf, 32), 1025, 0x00, 0x20)) { revert(0, 0) }
                h := mload(0x00)
            }
            level[c] = h;
        }
        bytes32 tree = chunks == 0 ? bytes32(0) : _treeRoot(level, chunks);
        return MerkleProofs.tensorRoot(MerkleProofs.DTYPE_U32, n, tree);
    }

    /// @dev Root of the complete tree over `count` leaves (EMPTY padding), overwriting `level`.
    function _treeRoot(bytes32[] memory level, uint256 count) private view returns (bytes32) {
        bytes32 zero; // root of an all-EMPTY subtree of the current height
        while (count > 1) {
            uint256 half = (count + 1) / 2;
            for (uint256 i; i < half; ++i) {
                bytes32 right = 2 * i + 1 < count ? level[2 * i + 1] : zero;
                level[i] = MerkleProofs.nodeHash(level[2 * i], right);
            }
            zero = MerkleProofs.nodeHash(zero, zero);
            count = half;
        }
        return level[0];
    }

    /// @notice Whether chunk[from:1024] is all zero (`from` a multiple of 4).
    function zeroFrom(bytes calldata chunk, uint256 from) internal pure returns (bool) {
        for (uint256 i = from; i < 1024; i += 32) {
            uint256 w;
            assembly ("memory-safe") {
                w := calldataload(add(chunk.offset, i))
            }
            if (i + 32 > 1024) w >>= 8 * (i + 32 - 1024);
            if (w != 0) return false;
        }
        return true;
    }

    /// @notice The little-endian uint32 at element j of `chunk` (a 1 KiB chunk or a token
    ///         list; callers keep 4 * j + 4 <= chunk.length).
    function word(bytes calldata chunk, uint256 j) internal pure returns (uint32) {
        uint256 w;
        assembly ("memory-safe") {
            w := shr(224, calldataload(add(chunk.offset, mul(j, 4))))
        }
        return uint32(
            ((w >> 24) & 0xFF) | ((w >> 8) & 0xFF00) | ((w << 8) & 0xFF0000)
                | ((w << 24) & 0xFF000000)
        );
    }

    /// @notice First element j < used where the two chunks differ; 256 if none.
    function firstDifference(bytes calldata a, bytes calldata b, uint256 used)
        internal
        pure
        returns (uint256)
    {
        for (uint256 i; i < 1024; i += 32) {
            uint256 x;
            uint256 y;
            assembly ("memory-safe") {
                x := calldataload(add(a.offset, i))
                y := calldataload(add(b.offset, i))
            }
            if (x != y) {
                uint256 j = i / 4;
                while ((x >> (224 - 32 * (j - i / 4))) & 0xFFFFFFFF == (y >> (224 - 32 * (j - i / 4))) & 0xFFFFFFFF) {
                    ++j;
                }
                return j < used ? j : 256;
            }
        }
        return 256;
    }
}
