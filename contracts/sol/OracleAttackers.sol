// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {IInferenceConsumer, InferenceOracle} from "./InferenceOracle.sol";

/// @title HostileConsumer: callbacks that try to block or exploit a delivery (tests only,
///        tests/test_oracle.py): revert, burn every unit of gas, return a huge buffer, re-enter
///        the oracle, or burn a set amount of gas and record that it finished (the 63/64 check).
/// @notice Modes: 0 revert, 1 loop forever, 2 return 128 KiB, 3 re-enter deliver, 4 re-enter
///         refund, 5 re-enter withdraw, 6 burn `burn` gas then record success.
contract HostileConsumer is IInferenceConsumer {
    /// @notice The oracle it attacks.
    InferenceOracle public immutable oracle;
    /// @notice What the callback does (see the contract's notice).
    uint8 public mode;
    /// @notice Gas mode 6 burns.
    uint256 public burn;
    /// @notice Mode 6 finished / the re-entrant call's revert selector (modes 3-5).
    bool public finished;
    /// @notice The selector the re-entrant call reverted with (modes 3-5).
    bytes4 public reentryError;
    /// @notice Whether the re-entrant call succeeded (it must not).
    bool public reentrySucceeded;

    /// @notice The callback reverted on purpose.
    error Hostile();

    /// @notice Deploy against an oracle.
    /// @param oracle_ The oracle.
    constructor(InferenceOracle oracle_) {
        oracle = oracle_;
    }

    /// @notice Set the behaviour.
    /// @param mode_ The mode.
    /// @param burn_ Gas burned in mode 6.
    function configure(uint8 mode_, uint256 burn_) external {
        mode = mode_;
        burn = burn_;
    }

    /// @notice Post a request with this contract as requester and callback.
    /// @param modelRoot The model.
    /// @param prompt Prompt tokens.
    /// @param maxNewTokens Tokens to generate.
    /// @param callbackGas Callback gas limit.
    /// @param deadline Answer deadline.
    /// @return The request id.
    function ask(
        bytes32 modelRoot,
        bytes calldata prompt,
        uint32 maxNewTokens,
        uint32 callbackGas,
        uint64 deadline
    ) external payable returns (uint256) {
        return oracle.request{value: msg.value}(
            modelRoot, prompt, maxNewTokens, 0, 0, address(this), callbackGas, deadline
        );
    }

    /// @notice The hostile callback.
    /// @param requestId The request.
    /// @param outputTokens The tokens.
    function onInference(uint256 requestId, bytes calldata outputTokens) external {
        uint8 m = mode;
        if (m == 0) revert Hostile();
        if (m == 1) {
            uint256 x;
            while (true) {
                x += 1;
            }
        }
        if (m == 2) {
            assembly {
                return(0, 0x20000)
            }
        }
        if (m >= 3 && m <= 5) {
            bytes memory call_ = m == 3
                ? abi.encodeCall(InferenceOracle.deliver, (requestId, outputTokens))
                : m == 4
                    ? abi.encodeCall(InferenceOracle.refund, (requestId))
                    : abi.encodeCall(InferenceOracle.withdraw, ());
            (bool ok, bytes memory ret) = address(oracle).call(call_);
            reentrySucceeded = ok;
            if (ret.length >= 4) reentryError = bytes4(ret);
            return;
        }
        uint256 until = gasleft() - burn;
        while (gasleft() > until) {}
        finished = true;
    }

    /// @notice Takes refunds.
    receive() external payable {}
}
