// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {IInferenceConsumer, InferenceOracle} from "./InferenceOracle.sol";

/// @title ExampleConsumer: a contract that asks the InferenceOracle for an inference and keeps
///        the output tokens it is delivered (docs/protocol.md section 9).
/// @notice `ask` posts a request with the fee sent and this contract as its callback;
///         `onInference` (called by the oracle once the answering claim is final) stores the
///         tokens. A refund of an unanswered request is credited to this contract on the oracle;
///         `reclaim` withdraws it to the owner.
/// @dev Invariants: C1 only the oracle can deliver, and only for requests this contract made
///      (anyone may name any contract as a callback); C2 a request's tokens are written once.
contract ExampleConsumer is IInferenceConsumer {
    /// @notice The oracle asked.
    InferenceOracle public immutable oracle;
    /// @notice Who deployed it: receives refunds (`reclaim`).
    address public immutable owner;
    /// @notice The last request made.
    uint256 public lastRequest;
    /// @notice requestId => made by this contract.
    mapping(uint256 => bool) public asked;
    /// @notice requestId => the output was delivered.
    mapping(uint256 => bool) public received;

    mapping(uint256 => bytes) internal _tokens;

    /// @notice A request was made.
    event Asked(uint256 indexed requestId, uint256 fee);
    /// @notice The output of a request arrived.
    event Received(uint256 indexed requestId, bytes outputTokens);

    /// @notice The caller is not the oracle.
    error NotOracle(address sender);
    /// @notice The request was not made by this contract.
    error NotAsked(uint256 requestId);
    /// @notice The output of the request was already received.
    error AlreadyReceived(uint256 requestId);
    /// @notice Only the owner may do this.
    error NotOwner(address sender);
    /// @notice The transfer to the owner failed.
    error TransferFailed();

    /// @notice Deploy against an oracle.
    /// @param oracle_ The oracle.
    constructor(InferenceOracle oracle_) {
        oracle = oracle_;
        owner = msg.sender;
    }

    /// @notice Ask for an inference; msg.value is the fee (see InferenceOracle.request).
    /// @param modelRoot The registered model.
    /// @param prompt Prompt tokens, 4-byte little-endian each.
    /// @param maxNewTokens Tokens to generate.
    /// @param temperature float32 bits.
    /// @param seed Sampling seed.
    /// @param callbackGas Gas for `onInference` (storing n tokens costs about 22,000 per 8).
    /// @param deadline Last timestamp an answer is accepted at.
    /// @return requestId The oracle's request id.
    function ask(
        bytes32 modelRoot,
        bytes calldata prompt,
        uint32 maxNewTokens,
        uint32 temperature,
        uint256 seed,
        uint32 callbackGas,
        uint64 deadline
    ) external payable returns (uint256 requestId) {
        requestId = oracle.request{value: msg.value}(
            modelRoot, prompt, maxNewTokens, temperature, seed, address(this), callbackGas, deadline
        );
        asked[requestId] = true;
        lastRequest = requestId;
        emit Asked(requestId, msg.value);
    }

    /// @notice The oracle's delivery (C1, C2).
    /// @param requestId The request.
    /// @param outputTokens The output tokens, 4-byte little-endian each.
    function onInference(uint256 requestId, bytes calldata outputTokens) external {
        if (msg.sender != address(oracle)) revert NotOracle(msg.sender);
        if (!asked[requestId]) revert NotAsked(requestId);
        if (received[requestId]) revert AlreadyReceived(requestId);
        received[requestId] = true;
        _tokens[requestId] = outputTokens;
        emit Received(requestId, outputTokens);
    }

    /// @notice The output tokens received for a request (empty before delivery).
    /// @param requestId The request.
    /// @return The tokens, 4-byte little-endian each.
    function tokensOf(uint256 requestId) external view returns (bytes memory) {
        return _tokens[requestId];
    }

    /// @notice Withdraw this contract's refunds from the oracle and pass them to the owner.
    function reclaim() external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        oracle.withdraw();
        (bool ok,) = payable(owner).call{value: address(this).balance}("");
        if (!ok) revert TransferFailed();
    }

    /// @notice Takes the oracle's refund transfers.
    receive() external payable {}
}
