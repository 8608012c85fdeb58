// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {MerkleProofs} from "./MerkleProofs.sol";

/// @title ProofHarness: external entry points to MerkleProofs, and a batching static multicall.
/// @notice For differential tests and gas benchmarks; not part of the dispute protocol. Every
///         verify* function reverts with MerkleProofs' custom errors exactly as the library does.
contract ProofHarness {
    /// @notice Check a list item (see MerkleProofs.verifyListItem); returns true or reverts.
    /// @param root The list root.
    /// @param count The number of items.
    /// @param index The item's index.
    /// @param leaf The item.
    /// @param siblings Its path, leaf level first.
    /// @return ok Always true.
    function verifyListItem(
        bytes32 root,
        uint256 count,
        uint256 index,
        bytes32 leaf,
        bytes32[] calldata siblings
    ) external view returns (bool ok) {
        MerkleProofs.verifyListItem(root, count, index, leaf, siblings);
        return true;
    }

    /// @notice Open a tensor element (see MerkleProofs.verifyElement).
    /// @param root The tensor root.
    /// @param dtype 0 float32, 1 uint32.
    /// @param length Elements of the tensor.
    /// @param index The element.
    /// @param chunk Its CHUNK_BYTES-byte chunk.
    /// @param siblings The chunk's path.
    /// @return valueBits The element's 32 bits.
    function verifyElement(
        bytes32 root,
        uint8 dtype,
        uint256 length,
        uint256 index,
        bytes calldata chunk,
        bytes32[] calldata siblings
    ) external view returns (uint32 valueBits) {
        return MerkleProofs.verifyElement(root, dtype, length, index, chunk, siblings);
    }

    /// @notice Check a trace record (see MerkleProofs.verifyRecord); returns true or reverts.
    /// @param traceRoot The trace root.
    /// @param recordCount Records in the trace.
    /// @param nodesPerPosition Records per position.
    /// @param position The record's position.
    /// @param nodeId The record's node.
    /// @param outputRoot The record's output root.
    /// @param siblings The record leaf's path.
    /// @return ok Always true.
    function verifyRecord(
        bytes32 traceRoot,
        uint256 recordCount,
        uint256 nodesPerPosition,
        uint256 position,
        uint256 nodeId,
        bytes32 outputRoot,
        bytes32[] calldata siblings
    ) external view returns (bool ok) {
        MerkleProofs.verifyRecord(
            traceRoot, recordCount, nodesPerPosition, position, nodeId, outputRoot, siblings
        );
        return true;
    }

    /// @notice Check a weight leaf (see MerkleProofs.verifyWeight); returns true or reverts.
    /// @param weightsRoot The weights root.
    /// @param weightCount Weights in the list.
    /// @param index The weight's index.
    /// @param name The weight's name.
    /// @param shape The weight's shape.
    /// @param tensorRoot The weight's tensor root.
    /// @param siblings The weight leaf's path.
    /// @return ok Always true.
    function verifyWeight(
        bytes32 weightsRoot,
        uint256 weightCount,
        uint256 index,
        string calldata name,
        uint64[] calldata shape,
        bytes32 tensorRoot,
        bytes32[] calldata siblings
    ) external view returns (bool ok) {
        MerkleProofs.verifyWeight(weightsRoot, weightCount, index, name, shape, tensorRoot, siblings);
        return true;
    }

    /// @notice Check a program node (see MerkleProofs.verifyNode); returns true or reverts.
    /// @param programRoot The program root.
    /// @param nodeCount Nodes of the program.
    /// @param index The node's id.
    /// @param descriptor abi.encode(node).
    /// @param siblings The node leaf's path.
    /// @return ok Always true.
    function verifyNode(
        bytes32 programRoot,
        uint256 nodeCount,
        uint256 index,
        bytes calldata descriptor,
        bytes32[] calldata siblings
    ) external view returns (bool ok) {
        MerkleProofs.verifyNode(programRoot, nodeCount, index, descriptor, siblings);
        return true;
    }

    /// @notice Gas of one list-item verification (measured with gasleft around the library
    ///         call, calldata decoding excluded); reverts if the proof is invalid.
    /// @param root The list root.
    /// @param count The number of items.
    /// @param index The item's index.
    /// @param leaf The item.
    /// @param siblings Its path.
    /// @return used Gas of the verification.
    function gasOfListItem(
        bytes32 root,
        uint256 count,
        uint256 index,
        bytes32 leaf,
        bytes32[] calldata siblings
    ) external view returns (uint256 used) {
        used = gasleft();
        MerkleProofs.verifyListItem(root, count, index, leaf, siblings);
        used -= gasleft();
    }

    /// @notice Gas of one element opening (see gasOfListItem).
    /// @param root The tensor root.
    /// @param dtype 0 float32, 1 uint32.
    /// @param length Elements of the tensor.
    /// @param index The element.
    /// @param chunk Its CHUNK_BYTES-byte chunk.
    /// @param siblings The chunk's path.
    /// @return used Gas of the verification.
    function gasOfElement(
        bytes32 root,
        uint8 dtype,
        uint256 length,
        uint256 index,
        bytes calldata chunk,
        bytes32[] calldata siblings
    ) external view returns (uint256 used) {
        used = gasleft();
        MerkleProofs.verifyElement(root, dtype, length, index, chunk, siblings);
        used -= gasleft();
    }

    /// @notice Static-call `target` with each of `calls`, collecting success flags and return
    ///         (or revert) data: many verifications in one eth_call.
    /// @param target The contract to call.
    /// @param calls ABI-encoded calls.
    /// @return ok ok[i] is true iff call i returned without reverting.
    /// @return results Return data of each call (revert data if it reverted).
    /// @return gasUsed Gas each call used (inside the static call).
    function multicall(address target, bytes[] calldata calls)
        external
        view
        returns (bool[] memory ok, bytes[] memory results, uint256[] memory gasUsed)
    {
        uint256 n = calls.length;
        ok = new bool[](n);
        results = new bytes[](n);
        gasUsed = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            uint256 g = gasleft();
            (ok[i], results[i]) = target.staticcall(calls[i]);
            gasUsed[i] = g - gasleft();
        }
    }
}
