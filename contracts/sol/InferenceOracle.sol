// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {Bisection} from "./Bisection.sol";
import {DisputeGame} from "./DisputeGame.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {Tokens} from "./Tokens.sol";

/// @title IInferenceConsumer: what a contract implements to receive an inference.
interface IInferenceConsumer {
    /// @notice Called by the oracle once the answering claim has finalised.
    /// @param requestId The request.
    /// @param outputTokens The output tokens, 4-byte little-endian uint32 each (as in the claim).
    function onInference(uint256 requestId, bytes calldata outputTokens) external;
}

/// @title InferenceOracle: on-chain inference requests answered by DisputeGame claims
///        (docs/protocol.md section 9).
/// @notice Anyone posts a request (a registered model, prompt tokens, max new tokens,
///         temperature, seed) with a fee, an optional callback and a deadline. A prover runs it,
///         commits to its trace root here (`commit`), posts the claim on the DisputeGame and
///         answers the request with it (`answer`): the claim's model root, prompt root,
///         temperature, seed and output length must be the request's, and the answer must come
///         from the claim's claimant. Once the claim has finalised anyone may `deliver` the
///         output tokens: the fee is credited to the claimant and the callback called under
///         its gas limit, its failure caught. An answer whose claim is overturned reopens the
///         request; a request left unanswered (or whose answer was overturned) past its
///         deadline is refunded to the requester. Payouts are credits (`withdraw`).
/// @dev Invariants (numbered as referred to in the code):
///      - O1 (conservation): every wei received is a request's fee; it is held in `escrowed`
///        while the request is Open or Answered and leaves it exactly once, credited either to
///        the claimant of the finalised answering claim (`deliver`) or to the requester
///        (`refund`). So address(this).balance == escrowed + sum of credits (no receive or
///        fallback function: only forced ether can make the balance larger).
///      - O2 (bound answers): an Answered request's claim is one of the answering sender's,
///        with the request's model root, prompt root, temperature, seed and output length,
///        and the sender committed to (itself, the request, the claim's trace root) in an
///        earlier block than the answer.
///      - O3 (priority): a standing answer is replaced only if its claim was overturned (by any
///        valid answer), or if its claim is still pending and the new answer's commitment is
///        from an earlier block. A copier learns a trace root only from the original's
///        postClaim, which the original sends after its commitment is mined, so a copied claim
///        can never take the request from the prover it copied.
///      - O4 (isolated callback): the callback runs after every state change of `deliver`
///        (status Delivered, fee credited), with exactly `callbackGas` (the transaction reverts
///        unless enough gas is left to forward all of it under the 63/64 rule), its return
///        data never copied and its failure recorded, never propagated.
///      - O5 (bounded): loops run over calldata only (the prompt's tokens and chunks).
contract InferenceOracle {
    // --- types -------------------------------------------------------------------------------

    /// @notice Lifecycle of a request.
    enum RequestStatus {
        None,
        Open, // waiting for an answer (or for a new one after an overturn)
        Answered, // a claim answers it; delivered once the claim finalises
        Delivered, // the fee went to the prover, the callback was called
        Refunded // the fee went back to the requester
    }

    /// @notice What the callback did at delivery.
    enum CallbackResult {
        None, // no callback, or not delivered yet
        Succeeded,
        Failed // reverted, ran out of its gas, or no code at the address
    }

    /// @notice A request (seven storage slots: the prompt is kept only as its tensor root).
    struct Request {
        address requester;
        uint64 deadline; // last timestamp an answer is accepted at; refunds after it
        RequestStatus status;
        CallbackResult callbackResult;
        address callback; // 0: none
        uint32 callbackGas;
        uint32 maxNewTokens;
        uint32 temperature; // float32 bits
        bytes32 modelRoot;
        bytes32 promptRoot; // tensor root of the prompt tokens (what a claim stores)
        uint256 seed;
        uint256 fee;
        uint64 claimId; // the answering claim (while Answered, Delivered)
        uint64 commitBlock; // block of its commitment (O3)
    }

    // --- constants and parameters ------------------------------------------------------------

    /// @notice Largest callback gas limit a request may ask for: a delivery must fit in a block
    ///         with room to spare, or a requester could make its own request undeliverable
    ///         and the prover unpaid.
    uint32 public constant MAX_CALLBACK_GAS = 1_000_000;
    /// @notice Gas `deliver` keeps beside the callback's 64/63 share: the call's own cost
    ///         (cold account, encoding) before it and the record and event after it.
    uint256 public constant CALLBACK_RESERVE = 30_000;

    /// @notice The dispute game whose claims answer requests.
    DisputeGame public immutable game;
    /// @notice Its model registry.
    ModelRegistry public immutable registry;

    // --- state -------------------------------------------------------------------------------

    /// @notice Number of requests; ids are 0 .. requestCount - 1.
    uint256 public requestCount;
    /// @notice Fees of the requests that are Open or Answered (O1).
    uint256 public escrowed;
    /// @notice Withdrawable credit per account.
    mapping(address => uint256) public credit;
    /// @notice Block in which an answer commitment was first made (0: never).
    mapping(bytes32 => uint256) public committedAt;

    mapping(uint256 => Request) internal _requests;

    // --- events ------------------------------------------------------------------------------

    /// @notice A request was posted; the prompt (4-byte little-endian tokens) is in the log for
    ///         provers, everything else is also readable with `getRequest`.
    event Requested(
        uint256 indexed requestId,
        address indexed requester,
        bytes32 indexed modelRoot,
        bytes prompt,
        uint32 maxNewTokens,
        uint32 temperature,
        uint256 seed,
        uint256 fee,
        address callback,
        uint32 callbackGas,
        uint64 deadline
    );
    /// @notice `sender` committed to an answer (see `commit`).
    event Committed(bytes32 indexed commitment, address indexed sender);
    /// @notice Claim `claimId` of `prover` answers the request (its commitment from `commitBlock`).
    event Answered(
        uint256 indexed requestId, uint256 indexed claimId, address indexed prover, uint256 commitBlock
    );
    /// @notice A pending answer was replaced by one committed earlier (O3).
    event Superseded(uint256 indexed requestId, uint256 indexed claimId, uint256 byClaimId);
    /// @notice The answering claim was overturned: the request takes answers again.
    event Reopened(uint256 indexed requestId, uint256 indexed claimId);
    /// @notice The output was delivered: `fee` credited to `prover`, the callback's result.
    event Delivered(
        uint256 indexed requestId,
        uint256 indexed claimId,
        address indexed prover,
        uint256 fee,
        CallbackResult callbackResult
    );
    /// @notice The fee went back to the requester.
    event Refunded(uint256 indexed requestId, address indexed requester, uint256 fee);
    /// @notice `amount` was credited to `account`.
    event Credited(address indexed account, uint256 amount);
    /// @notice `account` withdrew `amount`.
    event Withdrawn(address indexed account, uint256 amount);

    // --- errors ------------------------------------------------------------------------------

    /// @notice The model is not registered.
    error ModelNotRegistered(bytes32 modelRoot);
    /// @notice The model is registered under another spec version than the game's.
    error WrongSpecVersion(uint32 version, uint32 expected);
    /// @notice The prompt's length in bytes is not a multiple of 4.
    error BadTokenBytes(uint256 length);
    /// @notice The prompt is empty.
    error EmptyPrompt();
    /// @notice maxNewTokens is 0.
    error NoNewTokens();
    /// @notice More positions than the model allows.
    error TooManyPositions(uint256 positions, uint256 maxPositions);
    /// @notice The temperature is not a finite value >= 0.
    error BadTemperature(uint32 bits);
    /// @notice The deadline is not in the future.
    error DeadlineInPast(uint64 deadline, uint256 timestamp);
    /// @notice The callback gas limit is above MAX_CALLBACK_GAS.
    error CallbackGasTooHigh(uint32 gas, uint32 maximum);
    /// @notice A callback gas limit without a callback.
    error GasWithoutCallback();
    /// @notice No such request.
    error UnknownRequest(uint256 requestId);
    /// @notice The request takes no answer (delivered or refunded).
    error NotAnswerable(uint256 requestId, RequestStatus status);
    /// @notice The deadline has passed.
    error AnswerTooLate(uint256 requestId, uint64 deadline);
    /// @notice No such claim.
    error UnknownClaim(uint256 claimId);
    /// @notice The claim was overturned.
    error ClaimIsOverturned(uint256 claimId);
    /// @notice Only the claimant may answer with its claim.
    error NotClaimant(address sender, address claimant);
    /// @notice The claim's model root is not the request's.
    error WrongModel(bytes32 modelRoot, bytes32 expected);
    /// @notice The claim's prompt root is not the request's.
    error WrongPrompt(bytes32 promptRoot, bytes32 expected);
    /// @notice The claim's temperature is not the request's.
    error WrongTemperature(uint32 bits, uint32 expected);
    /// @notice The claim's seed is not the request's.
    error WrongSeed(uint256 seed, uint256 expected);
    /// @notice The claim's output length is not the request's maxNewTokens.
    error WrongOutputLength(uint256 length, uint256 expected);
    /// @notice No commitment of the sender to this answer from an earlier block.
    error NotCommitted(bytes32 commitment);
    /// @notice Another answer stands (or this claim already answers it).
    error AlreadyAnswered(uint256 requestId, uint256 claimId);
    /// @notice The request has no answer standing.
    error NotAnswered(uint256 requestId);
    /// @notice The answering claim was not overturned.
    error AnswerStands(uint256 requestId, uint256 claimId);
    /// @notice The answering claim has not finalised.
    error ClaimNotFinal(uint256 claimId);
    /// @notice The tokens are not the claim's output tokens.
    error WrongTokens();
    /// @notice Too little gas left to give the callback its whole gas limit (63/64 rule).
    error InsufficientGas(uint256 left, uint256 needed);
    /// @notice The request cannot be refunded (yet).
    error NotRefundable(uint256 requestId);
    /// @notice The deadline has not passed.
    error DeadlineNotPassed(uint256 requestId, uint64 deadline);
    /// @notice Nothing to withdraw.
    error NothingToWithdraw();
    /// @notice The transfer to the account failed.
    error TransferFailed();

    // --- construction --------------------------------------------------------------------------

    /// @notice Deploy beside a dispute game (and through it its registry).
    /// @param game_ The DisputeGame.
    constructor(DisputeGame game_) {
        game = game_;
        registry = game_.registry();
    }

    // =========================================================================================
    // Requests
    // =========================================================================================

    /// @notice Post a request; msg.value is its fee, held until delivery or refund (O1). The
    ///         prompt's tensor root is computed and stored here, once, so every answer is
    ///         checked by comparing one word (cheaper than storing a hash and having each
    ///         answer, the honest re-answer after an overturn included, re-send and re-hash
    ///         the prompt).
    /// @param modelRoot A registered model of the game's spec version.
    /// @param prompt The prompt tokens (each < vocab size), 4-byte little-endian uint32 each,
    ///        as DisputeGame.postClaim takes them.
    /// @param maxNewTokens Tokens to generate (>= 1): the answering claim's output length.
    /// @param temperature float32 bits of the temperature (finite, >= 0).
    /// @param seed The sampling seed.
    /// @param callback Contract to call with the output (IInferenceConsumer), or address(0).
    /// @param callbackGas Gas the callback gets (<= MAX_CALLBACK_GAS; 0 without a callback).
    /// @param deadline Last timestamp an answer is accepted at (after it: refund).
    /// @return requestId The new request's id.
    function request(
        bytes32 modelRoot,
        bytes calldata prompt,
        uint32 maxNewTokens,
        uint32 temperature,
        uint256 seed,
        address callback,
        uint32 callbackGas,
        uint64 deadline
    ) external payable returns (uint256 requestId) {
        _checkInference(modelRoot, prompt, maxNewTokens, temperature);
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline, block.timestamp);
        if (callbackGas > MAX_CALLBACK_GAS) revert CallbackGasTooHigh(callbackGas, MAX_CALLBACK_GAS);
        if (callback == address(0) && callbackGas != 0) revert GasWithoutCallback();
        requestId = requestCount++;
        Request storage r = _requests[requestId];
        r.requester = msg.sender;
        r.deadline = deadline;
        r.status = RequestStatus.Open;
        r.callback = callback;
        r.callbackGas = callbackGas;
        r.maxNewTokens = maxNewTokens;
        r.temperature = temperature;
        r.modelRoot = modelRoot;
        r.promptRoot = Bisection.tokenRoot(prompt);
        r.seed = seed;
        r.fee = msg.value;
        escrowed += msg.value;
        _emitRequested(requestId, r, prompt);
    }

    /// @notice Commit to answering `requestId` with a claim of trace root `traceRoot`, before
    ///         posting that claim: commitment = keccak256(abi.encode(prover, requestId,
    ///         traceRoot)) (`commitmentOf`). It hides the trace root until the claim is posted
    ///         and orders competing answers (O3). Idempotent: the first block is kept.
    /// @param commitment The commitment.
    function commit(bytes32 commitment) external {
        if (committedAt[commitment] != 0) return;
        committedAt[commitment] = block.number;
        emit Committed(commitment, msg.sender);
    }

    /// @notice Answer a request with a claim of the sender's on the game (pending or final),
    ///         before the deadline. The claim must match the request (model root, prompt root,
    ///         temperature, seed, output length = maxNewTokens) and the sender's commitment to
    ///         it must be from an earlier block (O2). An Open request takes it; an Answered one
    ///         only if the standing claim was overturned (the request reopens: Reopened), or is
    ///         pending and was committed in a later block than this one (Superseded, O3).
    /// @param requestId The request.
    /// @param claimId The sender's claim.
    function answer(uint256 requestId, uint256 claimId) external {
        Request storage r = _request(requestId);
        if (r.status != RequestStatus.Open && r.status != RequestStatus.Answered) {
            revert NotAnswerable(requestId, r.status);
        }
        if (block.timestamp > r.deadline) revert AnswerTooLate(requestId, r.deadline);
        DisputeGame.Claim memory c = game.getClaim(claimId);
        if (c.status == DisputeGame.ClaimStatus.None) revert UnknownClaim(claimId);
        if (c.status == DisputeGame.ClaimStatus.Overturned) revert ClaimIsOverturned(claimId);
        if (c.claimant != msg.sender) revert NotClaimant(msg.sender, c.claimant);
        _checkMatch(r, c);
        bytes32 commitment = commitmentOf(msg.sender, requestId, c.traceRoot);
        uint256 made = committedAt[commitment];
        if (made == 0 || made >= block.number) revert NotCommitted(commitment);
        if (r.status == RequestStatus.Answered) _replace(r, requestId, claimId, made);
        r.status = RequestStatus.Answered;
        r.claimId = uint64(claimId);
        r.commitBlock = uint64(made);
        emit Answered(requestId, claimId, msg.sender, made);
    }

    /// @notice Reopen a request whose answering claim was overturned (anyone). `answer` does
    ///         the same implicitly; this makes the state visible to provers that only read it.
    /// @param requestId The request.
    function reopen(uint256 requestId) external {
        Request storage r = _request(requestId);
        if (r.status != RequestStatus.Answered) revert NotAnswered(requestId);
        uint256 claimId = r.claimId;
        if (game.getClaim(claimId).status != DisputeGame.ClaimStatus.Overturned) {
            revert AnswerStands(requestId, claimId);
        }
        r.status = RequestStatus.Open;
        r.claimId = 0;
        r.commitBlock = 0;
        emit Reopened(requestId, claimId);
    }

    /// @notice Deliver the output of a request whose answering claim has finalised (anyone, at
    ///         any time after finality): the fee is credited to the claimant, then the callback
    ///         (if any) is called with (requestId, outputTokens) under exactly its gas limit.
    ///         A callback that reverts, runs out of gas or has no code is recorded as Failed;
    ///         it cannot undo the payment (O4). Reverts with InsufficientGas unless the
    ///         transaction has gas left to forward the callback its whole limit, so a caller
    ///         cannot starve it on purpose.
    /// @param requestId The request.
    /// @param outputTokens The claim's output tokens as posted (checked against its hash).
    /// @return result What the callback did (None without a callback).
    function deliver(uint256 requestId, bytes calldata outputTokens)
        external
        returns (CallbackResult result)
    {
        Request storage r = _request(requestId);
        if (r.status != RequestStatus.Answered) revert NotAnswered(requestId);
        uint256 claimId = r.claimId;
        DisputeGame.Claim memory c = game.getClaim(claimId);
        if (c.status != DisputeGame.ClaimStatus.Finalized) revert ClaimNotFinal(claimId);
        if (keccak256(outputTokens) != c.tokensHash) revert WrongTokens();
        // effects first (O1, O4): nothing the callback does can deliver or refund again
        r.status = RequestStatus.Delivered;
        uint256 fee = r.fee;
        escrowed -= fee;
        _credit(c.claimant, fee);
        if (r.callback != address(0)) {
            result = _callback(r.callback, r.callbackGas, requestId, outputTokens)
                ? CallbackResult.Succeeded
                : CallbackResult.Failed;
            r.callbackResult = result;
        }
        emit Delivered(requestId, claimId, c.claimant, fee, result);
    }

    /// @notice Credit the fee back to the requester (anyone may call it) once the deadline has
    ///         passed with no answer standing: the request is Open, or its answering claim was
    ///         overturned. A request answered by a pending claim waits for the claim's outcome.
    /// @param requestId The request.
    function refund(uint256 requestId) external {
        Request storage r = _request(requestId);
        if (r.status == RequestStatus.Answered) {
            if (game.getClaim(r.claimId).status != DisputeGame.ClaimStatus.Overturned) {
                revert NotRefundable(requestId);
            }
        } else if (r.status != RequestStatus.Open) {
            revert NotRefundable(requestId);
        }
        if (block.timestamp <= r.deadline) revert DeadlineNotPassed(requestId, r.deadline);
        r.status = RequestStatus.Refunded;
        uint256 fee = r.fee;
        escrowed -= fee;
        emit Refunded(requestId, r.requester, fee);
        _credit(r.requester, fee);
    }

    /// @notice Withdraw the sender's whole credit.
    function withdraw() external {
        uint256 amount = credit[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        credit[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    // --- views -------------------------------------------------------------------------------

    /// @notice A request.
    /// @param requestId The request.
    /// @return The request (all zero for an unknown id).
    function getRequest(uint256 requestId) external view returns (Request memory) {
        return _requests[requestId];
    }

    /// @notice The commitment `commit` takes for an answer.
    /// @param prover The answering account (the claim's claimant).
    /// @param requestId The request.
    /// @param traceRoot The claim's trace root.
    /// @return keccak256(abi.encode(prover, requestId, traceRoot)).
    function commitmentOf(address prover, uint256 requestId, bytes32 traceRoot)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(prover, requestId, traceRoot));
    }

    // =========================================================================================
    // Internals
    // =========================================================================================

    function _request(uint256 requestId) private view returns (Request storage r) {
        r = _requests[requestId];
        if (r.status == RequestStatus.None) revert UnknownRequest(requestId);
    }

    /// @dev What DisputeGame.postClaim would refuse, refused at the request (so that no fee
    ///      waits for an answer that cannot exist): model, spec version, tokens, positions,
    ///      temperature.
    function _checkInference(
        bytes32 modelRoot,
        bytes calldata prompt,
        uint32 maxNewTokens,
        uint32 temperature
    ) private view {
        if (!registry.isRegistered(modelRoot)) revert ModelNotRegistered(modelRoot);
        ModelRegistry.Model memory m = registry.model(modelRoot);
        uint32 version = game.specVersion();
        if (m.specVersion != version) revert WrongSpecVersion(m.specVersion, version);
        if (prompt.length % 4 != 0) revert BadTokenBytes(prompt.length);
        if (prompt.length == 0) revert EmptyPrompt();
        if (maxNewTokens == 0) revert NoNewTokens();
        uint256 positions = prompt.length / 4 + maxNewTokens - 1;
        if (positions > m.maxPositions) revert TooManyPositions(positions, m.maxPositions);
        // finite and >= 0: +0, -0 or a positive finite pattern (as DisputeGame.postClaim)
        if (temperature != 0x80000000 && temperature >= 0x7F800000) revert BadTemperature(temperature);
        Tokens.checkRange(prompt, m.vocabSize);
    }

    /// @dev O2: the claim is an inference of exactly this request.
    function _checkMatch(Request storage r, DisputeGame.Claim memory c) private view {
        if (c.modelRoot != r.modelRoot) revert WrongModel(c.modelRoot, r.modelRoot);
        if (c.promptRoot != r.promptRoot) revert WrongPrompt(c.promptRoot, r.promptRoot);
        if (c.temperature != r.temperature) revert WrongTemperature(c.temperature, r.temperature);
        if (c.seed != r.seed) revert WrongSeed(c.seed, r.seed);
        if (c.outputLength != r.maxNewTokens) revert WrongOutputLength(c.outputLength, r.maxNewTokens);
    }

    /// @dev O3: whether the standing answer gives way to claim `claimId` committed in `made`.
    function _replace(Request storage r, uint256 requestId, uint256 claimId, uint256 made) private {
        uint256 current = r.claimId;
        if (current == claimId) revert AlreadyAnswered(requestId, current);
        DisputeGame.ClaimStatus status = game.getClaim(current).status;
        if (status == DisputeGame.ClaimStatus.Overturned) {
            emit Reopened(requestId, current);
        } else if (status == DisputeGame.ClaimStatus.Pending && made < r.commitBlock) {
            emit Superseded(requestId, current, claimId);
        } else {
            revert AlreadyAnswered(requestId, current);
        }
    }

    /// @dev O4: call the callback with exactly `gasLimit` gas. A CALL forwards at most 63/64 of
    ///      the gas left after its own cost, so the transaction must hold gasLimit * 64/63 plus
    ///      the reserve here, or a caller could choose a gas limit that leaves the callback
    ///      short and makes it fail on purpose. The return data is not copied (a callback
    ///      cannot make the caller pay for a huge return).
    function _callback(address target, uint256 gasLimit, uint256 requestId, bytes calldata tokens)
        private
        returns (bool ok)
    {
        bytes memory data = abi.encodeCall(IInferenceConsumer.onInference, (requestId, tokens));
        uint256 needed = gasLimit + gasLimit / 63 + CALLBACK_RESERVE;
        if (gasleft() < needed) revert InsufficientGas(gasleft(), needed);
        if (target.code.length == 0) return false;
        assembly ("memory-safe") {
            ok := call(gasLimit, target, 0, add(data, 32), mload(data), 0, 0)
        }
    }

    /// @dev The Requested event, from storage (a separate frame keeps request's stack small).
    function _emitRequested(uint256 requestId, Request storage r, bytes calldata prompt) private {
        emit Requested(
            requestId,
            r.requester,
            r.modelRoot,
            prompt,
            r.maxNewTokens,
            r.temperature,
            r.seed,
            r.fee,
            r.callback,
            r.callbackGas,
            r.deadline
        );
    }

    function _credit(address account, uint256 amount) private {
        if (amount == 0) return;
        credit[account] += amount;
        emit Credited(account, amount);
    }
}
