// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

/// @title ModelRegistry: registered models, keyed by their model root (docs/commitments.md).
/// @notice A model is registered from its parts; the contract computes the model root itself,
///         exactly as `refute.engine.model.Model.root`:
///         sha256(0x12 || spec version (4 bytes) || weights root || program root || header hash
///         || config hash), header hash = sha256(abi.encode(uint64 nodesPerPosition,
///         uint64 maxPositions, uint64 vocabSize, uint64 logitsNode, uint64 tokenNode)).
///         So the program header a game reads from here is bound by the root a claim names.
/// @dev Invariants:
///      - R1 (bound header): `models[root]` holds exactly the parts that hash to `root`.
///      - R2 (immutable): an entry, once written, is never changed or removed.
///      - R3 (permissionless): anyone registers; registering twice reverts.
contract ModelRegistry {
    /// @notice The parts of a registered model.
    struct Model {
        bytes32 weightsRoot;
        bytes32 programRoot;
        bytes32 configHash;
        uint32 specVersion;
        uint64 nodesPerPosition;
        uint64 maxPositions;
        uint64 vocabSize;
        uint64 logitsNode;
        uint64 tokenNode;
        bool registered;
    }

    /// @notice Model root => parts.
    mapping(bytes32 => Model) private _models;

    /// @notice A model was registered.
    /// @param modelRoot The root computed from the parts.
    /// @param weightsRoot List root of the weight leaves.
    /// @param programRoot List root of the program's node leaves.
    /// @param configHash sha256 of the canonical config JSON.
    /// @param specVersion Version of the arithmetic spec.
    /// @param nodesPerPosition Program nodes (= trace records per position).
    /// @param maxPositions Largest number of positions a generation may run.
    /// @param vocabSize Vocabulary size.
    /// @param logitsNode Node giving the logits.
    /// @param tokenNode The SAMPLE node giving the next token.
    /// @param registrant Who registered it.
    event ModelRegistered(
        bytes32 indexed modelRoot,
        bytes32 weightsRoot,
        bytes32 programRoot,
        bytes32 configHash,
        uint32 specVersion,
        uint64 nodesPerPosition,
        uint64 maxPositions,
        uint64 vocabSize,
        uint64 logitsNode,
        uint64 tokenNode,
        address registrant
    );

    /// @notice The model root is registered already.
    error AlreadyRegistered(bytes32 modelRoot);
    /// @notice A header field is zero or a node index is not below nodesPerPosition.
    error BadHeader();
    /// @notice No model is registered under this root.
    error UnknownModel(bytes32 modelRoot);

    /// @notice Register a model from its parts; returns the model root computed on chain.
    /// @param weightsRoot List root of the weight leaves.
    /// @param programRoot List root of the node leaves.
    /// @param configHash sha256 of the canonical config JSON.
    /// @param specVersion Spec version of the arithmetic.
    /// @param nodesPerPosition Nodes of the program (> 0).
    /// @param maxPositions Maximum positions (> 0).
    /// @param vocabSize Vocabulary size (> 0).
    /// @param logitsNode Logits node (< nodesPerPosition).
    /// @param tokenNode Token (SAMPLE) node (< nodesPerPosition).
    /// @return modelRoot The model root.
    function register(
        bytes32 weightsRoot,
        bytes32 programRoot,
        bytes32 configHash,
        uint32 specVersion,
        uint64 nodesPerPosition,
        uint64 maxPositions,
        uint64 vocabSize,
        uint64 logitsNode,
        uint64 tokenNode
    ) external returns (bytes32 modelRoot) {
        if (
            nodesPerPosition == 0 || maxPositions == 0 || vocabSize == 0
                || logitsNode >= nodesPerPosition || tokenNode >= nodesPerPosition
        ) revert BadHeader();
        bytes32 header = sha256(
            abi.encode(nodesPerPosition, maxPositions, vocabSize, logitsNode, tokenNode)
        );
        modelRoot = sha256(
            abi.encodePacked(
                bytes1(0x12), specVersion, weightsRoot, programRoot, header, configHash
            )
        );
        if (_models[modelRoot].registered) revert AlreadyRegistered(modelRoot);
        _models[modelRoot] = Model({
            weightsRoot: weightsRoot,
            programRoot: programRoot,
            configHash: configHash,
            specVersion: specVersion,
            nodesPerPosition: nodesPerPosition,
            maxPositions: maxPositions,
            vocabSize: vocabSize,
            logitsNode: logitsNode,
            tokenNode: tokenNode,
            registered: true
        });
        emit ModelRegistered(
            modelRoot,
            weightsRoot,
            programRoot,
            configHash,
            specVersion,
            nodesPerPosition,
            maxPositions,
            vocabSize,
            logitsNode,
            tokenNode,
            msg.sender
        );
    }

    /// @notice The parts of a registered model; reverts with UnknownModel otherwise.
    /// @param modelRoot The model root.
    /// @return The model.
    function model(bytes32 modelRoot) external view returns (Model memory) {
        Model memory m = _models[modelRoot];
        if (!m.registered) revert UnknownModel(modelRoot);
        return m;
    }

    /// @notice Whether a model is registered under `modelRoot`.
    /// @param modelRoot The model root.
    /// @return True iff registered.
    function isRegistered(bytes32 modelRoot) external view returns (bool) {
        return _models[modelRoot].registered;
    }
}
