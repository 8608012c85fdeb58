// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

/// @title MerkleProofs: on-chain verification of refute's commitments (docs/commitments.md).
/// @notice Accepts exactly the proofs `refute.engine.merkle` produces: list items (weights,
///         program nodes, trace records) and tensor elements (a whole 1 KiB chunk plus its path).
///         Every check reverts with a named custom error; a function that returns has verified.
/// @dev Invariants:
///      - M1 (domain tags): every hashed message starts with its one-byte tag: 0x00 chunk leaf,
///        0x01 inner node, 0x02 tensor root, 0x03 list root, 0x10 program node leaf, 0x11 weight
///        leaf, 0x20 trace record leaf. A leaf can never pass for an inner node nor one kind of
///        root for another.
///      - M2 (fixed height): a tree over n leaves has height ceil(log2 n) (0 for n <= 1); the
///        count is bound into every root (list and tensor), so the path length is fixed by the
///        root: a truncated or extended path reverts with `WrongPathLength`.
///      - M3 (ordered pairs): the bits of the leaf index, lowest first, choose the side at each
///        level; with index < count and the fixed height, a proof binds its index.
///      - M4 (committed values): an element's value is read from the proven chunk at
///        `4 * index mod 1024`, never taken from the caller; the bytes after the last element of
///        the last chunk must be zero.
///      Hashing is the sha256 precompile (address 0x02).
library MerkleProofs {
    /// @notice An index is not below the number of leaves (or elements) it is proven against.
    /// @param index The index.
    /// @param count The number of leaves or elements.
    error IndexOutOfRange(uint256 index, uint256 count);
    /// @notice A proof has the wrong number of siblings for the size of its tree.
    /// @param length The number of siblings given.
    /// @param expected ceil(log2(number of leaves)).
    error WrongPathLength(uint256 length, uint256 expected);
    /// @notice The root recomputed from the proof is not the committed root.
    /// @param computed The root the proof leads to.
    /// @param expected The committed root.
    error RootMismatch(bytes32 computed, bytes32 expected);
    /// @notice A tensor chunk is not exactly CHUNK_BYTES (1024) bytes.
    /// @param length Its length in bytes.
    error BadChunkLength(uint256 length);
    /// @notice The zero padding after the last element of the last chunk is not zero.
    /// @param offset Byte offset in the chunk where the non-zero padding was found.
    error NonZeroPadding(uint256 offset);
    /// @notice A tensor dtype code other than 0 (float32) or 1 (uint32).
    /// @param dtype The code.
    error BadDtype(uint256 dtype);
    /// @notice A count or length does not fit the 8 bytes it is committed with.
    /// @param count The value.
    error CountTooLarge(uint256 count);
    /// @notice A trace record's node id is not below the number of nodes per position.
    /// @param nodeId The node id.
    /// @param nodesPerPosition Nodes per position of the trace.
    error RecordNodeOutOfRange(uint256 nodeId, uint256 nodesPerPosition);

    uint256 internal constant CHUNK_BYTES = 1024;
    uint256 internal constant VALUES_PER_CHUNK = 256;
    uint8 internal constant DTYPE_F32 = 0;
    uint8 internal constant DTYPE_U32 = 1;
    uint256 private constant MAX_COUNT = 1 << 64;

    // =========================================================================================
    // Hashing
    // =========================================================================================

    /// @notice ceil(log2(count)), 0 for count <= 1: the height of a tree over `count` leaves.
    function depthFor(uint256 count) internal pure returns (uint256 d) {
        if (count <= 1) return 0;
        uint256 x = count - 1; // bit length of x
        if (x >> 128 != 0) { x >>= 128; d += 128; }
        if (x >> 64 != 0) { x >>= 64; d += 64; }
        if (x >> 32 != 0) { x >>= 32; d += 32; }
        if (x >> 16 != 0) { x >>= 16; d += 16; }
        if (x >> 8 != 0) { x >>= 8; d += 8; }
        if (x >> 4 != 0) { x >>= 4; d += 4; }
        if (x >> 2 != 0) { x >>= 2; d += 2; }
        if (x >> 1 != 0) { x >>= 1; d += 1; }
        d += x;
    }

    /// @notice Inner node: sha256(0x01 || left || right).
    function nodeHash(bytes32 left, bytes32 right) internal view returns (bytes32 h) {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore8(p, 0x01)
            mstore(add(p, 1), left)
            mstore(add(p, 33), right)
            if iszero(staticcall(gas(), 0x02, p, 65, 0x00, 0x20)) { revert(0, 0) }
            h := mload(0x00)
        }
    }

    /// @notice Chunk leaf: sha256(0x00 || chunk) of a CHUNK_BYTES-byte chunk in calldata.
    function chunkLeaf(bytes calldata chunk) internal view returns (bytes32 h) {
        if (chunk.length != CHUNK_BYTES) revert BadChunkLength(chunk.length);
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore8(p, 0x00)
            calldatacopy(add(p, 1), chunk.offset, CHUNK_BYTES)
            if iszero(staticcall(gas(), 0x02, p, add(CHUNK_BYTES, 1), 0x00, 0x20)) { revert(0, 0) }
            h := mload(0x00)
        }
    }

    /// @notice Climb from a leaf: bit i of `index` says whether the node at level i is a right
    ///         child. The caller has checked `index < 2^siblings.length`.
    function climb(bytes32 leaf, uint256 index, bytes32[] calldata siblings)
        internal
        view
        returns (bytes32 h)
    {
        h = leaf;
        uint256 n = siblings.length;
        for (uint256 i; i < n; ++i) {
            h = index & 1 == 1 ? nodeHash(siblings[i], h) : nodeHash(h, siblings[i]);
            index >>= 1;
        }
    }

    /// @notice List root: sha256(0x03 || count (8 bytes) || tree root).
    function listRoot(uint256 count, bytes32 tree) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x03), uint64(count), tree));
    }

    /// @notice Tensor root: sha256(0x02 || dtype (1 byte) || element count (8 bytes) || tree).
    function tensorRoot(uint8 dtype, uint256 length, bytes32 tree) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x02), dtype, uint64(length), tree));
    }

    /// @notice Trace record leaf: sha256(0x20 || position (8 bytes) || node id (4 bytes) || root).
    function recordLeaf(uint256 position, uint256 nodeId, bytes32 outputRoot)
        internal
        pure
        returns (bytes32)
    {
        return sha256(abi.encodePacked(bytes1(0x20), uint64(position), uint32(nodeId), outputRoot));
    }

    /// @notice Weight leaf: sha256(0x11 || abi.encode(name, shape) || tensor root).
    function weightLeaf(string calldata name, uint64[] calldata shape, bytes32 root)
        internal
        pure
        returns (bytes32)
    {
        return sha256(abi.encodePacked(bytes1(0x11), abi.encode(name, shape), root));
    }

    /// @notice Program node leaf: sha256(0x10 || abi.encode(node)), the ABI bytes as given.
    function nodeLeaf(bytes calldata descriptor) internal pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x10), descriptor));
    }

    // =========================================================================================
    // Verification (reverts unless the proof is valid)
    // =========================================================================================

    /// @notice Check that `leaf` is item `index` of the list of `count` items committed by `root`
    ///         (`merkle.list_root` / `merkle.tree_proof`).
    function verifyListItem(
        bytes32 root,
        uint256 count,
        uint256 index,
        bytes32 leaf,
        bytes32[] calldata siblings
    ) internal view {
        if (count >= MAX_COUNT) revert CountTooLarge(count);
        if (index >= count) revert IndexOutOfRange(index, count);
        uint256 depth = depthFor(count);
        if (siblings.length != depth) revert WrongPathLength(siblings.length, depth);
        bytes32 computed = listRoot(count, climb(leaf, index, siblings));
        if (computed != root) revert RootMismatch(computed, root);
    }

    /// @notice Open element `index` of the tensor committed by `root` (`merkle.prove_element`):
    ///         checks index < length, the chunk size, the path length ceil(log2(chunks)), the zero
    ///         padding of the last chunk, recomputes the root, and returns the element's 4 bytes
    ///         read little-endian from the chunk.
    /// @param dtype 0 float32, 1 uint32: bound into the root.
    /// @param length Number of elements of the tensor: bound into the root.
    function verifyElement(
        bytes32 root,
        uint8 dtype,
        uint256 length,
        uint256 index,
        bytes calldata chunk,
        bytes32[] calldata siblings
    ) internal view returns (uint32 valueBits) {
        if (dtype > DTYPE_U32) revert BadDtype(dtype);
        if (length >= MAX_COUNT) revert CountTooLarge(length);
        if (index >= length) revert IndexOutOfRange(index, length);
        uint256 depth = depthFor((length + VALUES_PER_CHUNK - 1) / VALUES_PER_CHUNK);
        if (siblings.length != depth) revert WrongPathLength(siblings.length, depth);
        uint256 c = index / VALUES_PER_CHUNK;
        bytes32 leaf = chunkLeaf(chunk);
        uint256 used = length - c * VALUES_PER_CHUNK; // elements of this chunk that exist
        if (used < VALUES_PER_CHUNK) _requireZeroFrom(chunk, used * 4);
        bytes32 computed = tensorRoot(dtype, length, climb(leaf, c, siblings));
        if (computed != root) revert RootMismatch(computed, root);
        uint256 word;
        uint256 offset = (index % VALUES_PER_CHUNK) * 4;
        assembly ("memory-safe") {
            word := shr(224, calldataload(add(chunk.offset, offset)))
        }
        // little-endian bytes b0 b1 b2 b3 -> b0 | b1 << 8 | b2 << 16 | b3 << 24
        valueBits = uint32(
            ((word >> 24) & 0xFF) | ((word >> 8) & 0xFF00) | ((word << 8) & 0xFF0000)
                | ((word << 24) & 0xFF000000)
        );
    }

    /// @notice Check that trace record (position, nodeId, outputRoot) is in the trace committed by
    ///         `traceRoot` (`Trace.record_proof`); records are position-major.
    function verifyRecord(
        bytes32 traceRoot,
        uint256 recordCount,
        uint256 nodesPerPosition,
        uint256 position,
        uint256 nodeId,
        bytes32 outputRoot,
        bytes32[] calldata siblings
    ) internal view {
        if (nodeId >= nodesPerPosition) revert RecordNodeOutOfRange(nodeId, nodesPerPosition);
        if (position >= MAX_COUNT) revert CountTooLarge(position);
        uint256 index = position * nodesPerPosition + nodeId; // < 2^64 * 2^64: no overflow
        verifyListItem(
            traceRoot, recordCount, index, recordLeaf(position, nodeId, outputRoot), siblings
        );
    }

    /// @notice Check that weight `index` is (name, shape, tensorRoot) in the weights list
    ///         committed by `weightsRoot` (`merkle.tree_proof(model.weight_leaves, index)`).
    function verifyWeight(
        bytes32 weightsRoot,
        uint256 weightCount,
        uint256 index,
        string calldata name,
        uint64[] calldata shape,
        bytes32 tensorRootHash,
        bytes32[] calldata siblings
    ) internal view {
        verifyListItem(
            weightsRoot, weightCount, index, weightLeaf(name, shape, tensorRootHash), siblings
        );
    }

    /// @notice Check that `descriptor` (abi.encode of a node, docs/ir.md) is node `index` of the
    ///         program committed by `programRoot`.
    function verifyNode(
        bytes32 programRoot,
        uint256 nodeCount,
        uint256 index,
        bytes calldata descriptor,
        bytes32[] calldata siblings
    ) internal view {
        verifyListItem(programRoot, nodeCount, index, nodeLeaf(descriptor), siblings);
    }

    /// @dev Reverts unless chunk[from:CHUNK_BYTES] is all zero; `from` is a multiple of 4 below it.
    function _requireZeroFrom(bytes calldata chunk, uint256 from) private pure {
        for (uint256 i = from; i < CHUNK_BYTES; i += 32) {
            uint256 w;
            assembly ("memory-safe") {
                w := calldataload(add(chunk.offset, i))
            }
            if (i + 32 > CHUNK_BYTES) w >>= 8 * (i + 32 - CHUNK_BYTES); // past the chunk's end
            if (w != 0) revert NonZeroPadding(i);
        }
    }
}
