// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {MerkleProofs} from "./MerkleProofs.sol";
import {OneStepVerifier} from "./OneStepVerifier.sol";
import {SoftFloat32} from "./SoftFloat32.sol";
import {Tokens} from "./Tokens.sol";

/// @title NodeReader: what the dispute game reads from a node descriptor, the combine step of
///        a reduction tree, the opening of a claim's sampled token and the range check of a
///        claim's tokens (a separate contract so that DisputeGame stays under 24 KiB).
/// @dev Invariants:
///      - N1 (same IR): `shapeAt` resolves shapes as OneStepVerifier does (T = t + 1); dtype is
///        uint32 exactly for SAMPLE nodes and ARGMAX reductions (docs/ir.md).
///      - N2 (same arithmetic): `combine` is the verifier's TREE step (add, max, argmax rule).
///      - N3 (bounded): loops run over the node's rank.
contract NodeReader {
    uint8 internal constant OP_MAP = 0;
    uint8 internal constant OP_REDUCE = 1;
    uint8 internal constant OP_CACHE_APPEND = 2;
    uint8 internal constant OP_SAMPLE = 3;
    uint8 internal constant RED_SUM = 1;
    uint8 internal constant RED_MAX = 2;
    uint8 internal constant RED_ARGMAX = 3;
    uint256 private constant MAX_DIM = 1 << 62;

    /// @notice A node descriptor the game cannot use (unknown op, bad dimension).
    error BadNode(uint256 nodeId);

    /// @notice What the game needs to know about the disputed node at position t.
    struct Shape {
        uint8 op;
        uint8 reducer; // ARGMAX for SAMPLE nodes
        uint8 dtype; // 1 (uint32) for SAMPLE and ARGMAX outputs, else 0
        uint64 length; // output elements at t
        uint64 width; // padded reduction width (1 for MAP / CACHE_APPEND)
    }

    /// @notice Output shape of node `nodeId` (its ABI descriptor) at position t.
    /// @param descriptor abi.encode of the node (docs/ir.md), already proven by the caller.
    /// @param nodeId The node's id (for errors).
    /// @param t The position.
    /// @return s op, reducer, dtype, output length at t and padded reduction width.
    function shapeAt(bytes calldata descriptor, uint256 nodeId, uint256 t)
        public
        pure
        returns (Shape memory s)
    {
        OneStepVerifier.Node memory node = abi.decode(descriptor, (OneStepVerifier.Node));
        s.op = node.op;
        if (s.op > OP_SAMPLE) revert BadNode(nodeId);
        s.reducer = s.op == OP_SAMPLE ? RED_ARGMAX : node.reducer;
        if (s.op == OP_REDUCE && (s.reducer == 0 || s.reducer > RED_ARGMAX)) revert BadNode(nodeId);
        s.dtype = (s.op == OP_SAMPLE || (s.op == OP_REDUCE && s.reducer == RED_ARGMAX)) ? 1 : 0;
        uint256 size = 1;
        for (uint256 i; i < node.shape.length; ++i) {
            size *= _dim(node.shape[i], t, nodeId);
            if (size >= MAX_DIM) revert BadNode(nodeId);
        }
        s.length = uint64(size);
        s.width = 1;
        if (s.op == OP_REDUCE || s.op == OP_SAMPLE) {
            uint256 k = _dim(node.reduceLen, t, nodeId);
            s.width = uint64(k <= 1 ? 1 : 1 << MerkleProofs.depthFor(k));
        }
    }

    /// @notice `shapeAt` of a node whose descriptor is first proven against the program root.
    /// @param programRoot The model's program root.
    /// @param nodeCount Nodes per position.
    /// @param np The node's id, descriptor and program proof.
    /// @param t The position.
    /// @return The shape (see `shapeAt`).
    function provenShapeAt(
        bytes32 programRoot,
        uint256 nodeCount,
        OneStepVerifier.NodeProof calldata np,
        uint256 t
    ) external view returns (Shape memory) {
        MerkleProofs.verifyNode(programRoot, nodeCount, np.id, np.descriptor, np.siblings);
        return shapeAt(np.descriptor, np.id, t);
    }

    /// @notice The token of sample record (position, tokenNode): the record is proven against
    ///         the trace root and element 0 of its one-element uint32 output against the
    ///         record's output root (DisputeGame.proveTokenMismatch). Reverts unless both hold.
    /// @param traceRoot The claim's trace root.
    /// @param recordCount Its number of records.
    /// @param nodesPerPosition Nodes per position.
    /// @param position The sample record's position.
    /// @param tokenNode The sample node.
    /// @param recordRoot The record's output root.
    /// @param recordSiblings Its path in the trace tree.
    /// @param chunk The output's (only) chunk.
    /// @param chunkSiblings Its path (empty).
    /// @return The token.
    function sampledToken(
        bytes32 traceRoot,
        uint256 recordCount,
        uint256 nodesPerPosition,
        uint256 position,
        uint256 tokenNode,
        bytes32 recordRoot,
        bytes32[] calldata recordSiblings,
        bytes calldata chunk,
        bytes32[] calldata chunkSiblings
    ) external view returns (uint32) {
        MerkleProofs.verifyRecord(
            traceRoot, recordCount, nodesPerPosition, position, tokenNode, recordRoot, recordSiblings
        );
        return MerkleProofs.verifyElement(
            recordRoot, MerkleProofs.DTYPE_U32, 1, 0, chunk, chunkSiblings
        );
    }

    /// @notice Revert with Tokens.TokenOutOfRange unless every token of a claim is < vocab.
    /// @param prompt uint32 tensor data (4-byte little-endian words).
    /// @param outputTokens Likewise.
    /// @param vocab The vocabulary size (> 0).
    function checkTokens(bytes calldata prompt, bytes calldata outputTokens, uint256 vocab)
        external
        pure
    {
        Tokens.checkRange(prompt, vocab);
        Tokens.checkRange(outputTokens, vocab);
    }

    function _dim(int64 d, uint256 t, uint256 nodeId) private pure returns (uint256) {
        if (d == -1) return t + 1;
        if (d <= 0 || uint64(d) >= MAX_DIM) revert BadNode(nodeId);
        return uint256(uint64(d));
    }

    /// @notice One node of a reduction tree: (value, index) of combine(left, right); `ok` is
    ///         false if a child is a non-canonical NaN (which no honest tree holds).
    /// @param reducer SUM, MAX or ARGMAX.
    /// @param lv Left value bits.
    /// @param li Left index (ARGMAX).
    /// @param rv Right value bits.
    /// @param ri Right index (ARGMAX).
    /// @return ok False for a non-canonical NaN child.
    /// @return v The combined value.
    /// @return idx The combined index (ARGMAX), else 0.
    function combine(uint8 reducer, uint32 lv, uint32 li, uint32 rv, uint32 ri)
        external
        pure
        returns (bool ok, uint32 v, uint32 idx)
    {
        if (!_canonical(lv) || !_canonical(rv)) return (false, 0, 0);
        if (reducer == RED_SUM) return (true, SoftFloat32.add(lv, rv), 0);
        if (reducer == RED_MAX) return (true, SoftFloat32.max(lv, rv), 0);
        bool lnan = SoftFloat32.isNaN(lv);
        bool rnan = SoftFloat32.isNaN(rv);
        if (SoftFloat32.lt(lv, rv) || (rnan && !lnan)) return (true, rv, ri);
        return (true, lv, li);
    }

    function _canonical(uint32 x) private pure returns (bool) {
        return !SoftFloat32.isNaN(x) || x == SoftFloat32.CANONICAL_NAN;
    }
}
