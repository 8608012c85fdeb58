// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {Bisection} from "./Bisection.sol";
import {MerkleProofs} from "./MerkleProofs.sol";
import {NodeReader} from "./NodeReader.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {OneStepVerifier} from "./OneStepVerifier.sol";

/// @title DisputeGame: claims about inferences, and the two-sided bisection game that refutes
///        them (docs/protocol.md).
/// @notice A prover posts a claim (model root, prompt, request, output tokens, trace root) with
///         the claim bond. Within the window W anyone may prove an output-token mismatch, or open
///         a dispute with its own trace root and the challenge bond. A dispute is played between
///         the CLAIM side (defending the claim's trace root) and the CHALLENGE side (defending
///         the challenger's), the claim side revealing first at every step:
///         - level 1 (stage TRACE, then RECORD): the trace trees are descended, left if the left
///           children differ, to the leftmost differing record r = (t, n); both sides open their
///           record leaf to (dtype, length, chunk tree) and a wrong shape for n at t loses;
///         - level 2 (CHUNKS, then CHUNK): the chunk trees are descended to the leftmost
///           differing chunk; both chunks are revealed and the first differing element e found;
///         - level 3 (REDUCTION, REDUCE and SAMPLE nodes only): the element's reduction tree is
///           descended, each reveal checked by one combine step (a side that fails loses);
///         - level 4 (STEP): the OneStepVerifier recomputes the disputed value with proofs
///           against the claim's trace root; the claim side loses iff its value differs.
///         Each side has a chess clock; `timeout` makes the side to move lose once its clock has
///         run out. Every move carries the move bond; payouts are credits (`settle`,
///         `collectReward`, `withdraw`). Payouts follow protocol draft 4 (docs/protocol.md
///         section 5): a per-position claim fee to the watchers' fund, half of a forfeited claim
///         bond burned and half shared among the claim's successful challenges once it settles,
///         token-mismatch proofs by commit-reveal, and a losing side's move bonds to the winning
///         side's opener.
/// @dev Invariants (the numbers are referred to in the code):
///      - G1 (one disagreement): while a dispute is in a bisection stage, node[CLAIM] !=
///        node[CHALLENGE]; every left-first descent keeps it, and everything left of the
///        current path is identical in both trees, so r is the leftmost differing record and
///        its inputs are agreed.
///      - G2 (linked levels): every level starts from what the previous one ended on: RECORD
///        opens the two record leaves the trace descent reached, CHUNKS starts from the two chunk
///        trees RECORD opened, REDUCTION from the two element values CHUNK found, STEP from
///        the two leaf values REDUCTION ended on.
///      - G3 (unique reveals): a reveal at levels 1 and 2 is a hash preimage, so there is one
///        consistent move per side and anyone may make it; an inconsistent one reverts and
///        changes nothing. Level-3 reveals are not bound by a hash, so only the side's owner
///        (claimant / challenger) may make them (docs deviation, see `revealReduction`).
///      - G4 (clocks): only the side to move has its clock running; a move never changes the
///        other side's remaining time except raising it to the extension E; no move after the
///        mover's clock ran out, no timeout before.
///      - G5 (conservation): every wei received (claim fees, claim, challenge and move bonds) is
///        credited or burned exactly once: the fee to feeRecipient at once; a move bond to its
///        mover if its side wins (`settle`), else to the winning side's opener at resolution; a
///        forfeited claim bond half to `burned`, half to the claim's reward pool, paid out in
///        equal units per share (`collectReward`) with the rounding dust burned once. So at all
///        times: balance == sum of credits + outstanding bonds + unpaid rewards + burned.
///      - G8 (rewards): a claim's shares are fixed once it is settled (overturned, W passed, no
///        dispute open): only disputes (opened while it was pending) resolving for the challenge
///        side and token-mismatch proofs committed in a block before the overturn block count.
///      - G6 (counted disputes): claim.openDisputes is the number of unresolved disputes of the
///        claim; a claim finalises only when it is 0, W has passed and it was not overturned.
///      - G7 (bounded): no loop over moves, disputes or accounts; loops run over calldata.
contract DisputeGame {
    // --- types -------------------------------------------------------------------------------

    /// @notice Lifecycle of a claim.
    enum ClaimStatus {
        None,
        Pending,
        Finalized,
        Overturned
    }

    /// @notice Where a dispute stands.
    enum Stage {
        None,
        Trace, // level 1: descending the trace trees
        Record, // level 1: opening the record leaves
        Chunks, // level 2: descending the chunk trees
        Chunk, // level 2: revealing the chunks
        Reduction, // level 3: descending the reduction tree
        Step, // level 4: the one-step verification
        Resolved
    }

    /// @notice A claim (docs/protocol.md section 2).
    struct Claim {
        address claimant;
        uint64 deadline; // end of the window W
        uint32 openDisputes;
        ClaimStatus status;
        uint64 overturnBlock; // block in which it was overturned (0 otherwise)
        uint32 wins; // successful challenges: shares of the reward pool
        bool dustBurned; // the pool's rounding dust was burned (first collectReward)
        bytes32 modelRoot;
        bytes32 promptRoot;
        bytes32 traceRoot;
        bytes32 tokensHash; // keccak256 of the output tokens' bytes
        uint64 numRecords;
        uint64 promptLength;
        uint64 outputLength;
        uint64 nodesPerPosition;
        uint64 tokenNode;
        uint32 temperature;
        uint256 seed;
    }

    /// @notice A dispute; side 0 is CLAIM, side 1 CHALLENGE.
    struct Dispute {
        uint256 claimId;
        address challenger;
        Stage stage;
        uint8 toMove;
        uint8 winner; // 0 none, 1 CLAIM side, 2 CHALLENGE side
        bool valueKnown; // level 3: false at an ARGMAX/SAMPLE root (only the index is known)
        uint8 op;
        uint8 reducer;
        uint64 turnStart;
        uint64[2] clock;
        bytes32[2] node; // current tree node (levels 1-2) of each side
        bytes32[2] pending; // the claim side's reveal, waiting for the challenge side's
        uint64 height; // levels below the current node
        uint64 index; // index of the current node at its height (record / chunk / leaf)
        uint64 position; // t of record r
        uint64 nodeId; // n of record r
        uint64 length; // elements of n's output at t
        uint64 width; // padded reduction width
        uint64 element; // e
        uint32[2] value; // level 3 / 4: the two current values
        uint32[2] valueIndex; // ... and their indices (ARGMAX / SAMPLE)
        uint32 moves; // sides alternate from CLAIM: (moves + 1) / 2 claim-side moves
    }

    // --- constants and parameters ------------------------------------------------------------

    uint8 internal constant CLAIM = 0;
    uint8 internal constant CHALLENGE = 1;
    uint256 internal constant NONE = type(uint256).max;
    uint8 internal constant OP_REDUCE = 1;
    uint8 internal constant OP_SAMPLE = 3;
    uint8 internal constant RED_ARGMAX = 3;

    /// @notice Node shapes and the combine step (deployed by the constructor).
    NodeReader public immutable reader;

    /// @notice The model registry.
    ModelRegistry public immutable registry;
    /// @notice The one-step verifier.
    OneStepVerifier public immutable verifier;
    /// @notice Spec version claims must be made under.
    uint32 public immutable specVersion;
    /// @notice B_c, B_x, b (wei).
    uint256 public immutable claimBond;
    /// @notice See claimBond.
    uint256 public immutable challengeBond;
    /// @notice See claimBond.
    uint256 public immutable moveBond;
    /// @notice The challenge window W (seconds).
    uint64 public immutable window;
    /// @notice Each side's clock C (seconds).
    uint64 public immutable clock;
    /// @notice The clock extension E (seconds).
    uint64 public immutable extension;
    /// @notice Non-refundable claim fee per position (wei), credited to feeRecipient.
    uint256 public immutable feePerPosition;
    /// @notice The watchers' fund that receives the claim fees.
    address public immutable feeRecipient;

    // --- state -------------------------------------------------------------------------------

    /// @notice Number of claims posted; ids are 0 .. claimCount - 1.
    uint256 public claimCount;
    /// @notice Number of disputes opened; ids are 0 .. disputeCount - 1.
    uint256 public disputeCount;
    /// @notice Withdrawable credit per account.
    mapping(address => uint256) public credit;
    /// @notice Wei burned: half of every forfeited claim bond and the pools' rounding dust. It
    ///         stays in this contract forever (no function moves it).
    uint256 public burned;
    /// @notice Block in which a token-proof commitment was first made (0: never).
    mapping(bytes32 => uint256) public committedAt;
    /// @notice claim => account => shares of the claim's reward pool not yet collected.
    mapping(uint256 => mapping(address => uint256)) public rewardShares;
    /// claim => account => it has had a token-mismatch proof accepted (one per beneficiary)
    mapping(uint256 => mapping(address => bool)) internal _tokenProved;

    mapping(uint256 => Claim) internal _claims;
    mapping(uint256 => Dispute) internal _disputes;
    /// dispute => account => side => move bonds it paid on that side
    mapping(uint256 => mapping(address => uint256[2])) internal _paid;

    // --- events (docs/protocol.md section 7) ---------------------------------------------------

    /// @notice A claim was posted; prompt and tokens (4-byte little-endian uint32 each, the
    ///         encoding of docs/commitments.md) are in the log for watchers (the rest of the
    ///         claim, e.g. its deadline, is read with `getClaim`).
    event ClaimPosted(
        uint256 indexed claimId,
        bytes32 indexed modelRoot,
        address indexed claimant,
        bytes prompt,
        uint32 temperature,
        uint256 seed,
        bytes outputTokens,
        bytes32 traceRoot
    );
    /// @notice A dispute was opened against a claim.
    event DisputeOpened(
        uint256 indexed disputeId,
        uint256 indexed claimId,
        address indexed challenger,
        bytes32 challengeRoot
    );
    /// @notice A move: `data` is what it revealed (ABI-encoded), `clockRemaining` the mover
    ///         side's remaining time after it.
    event Moved(
        uint256 indexed disputeId,
        uint8 level,
        uint256 index,
        uint8 side,
        bytes data,
        address mover,
        uint64 clockRemaining
    );
    /// @notice A level ended on `where` (record index, element, leaf) with the two values.
    event LevelCompleted(
        uint256 indexed disputeId, uint8 level, uint256 where, bytes32 claimValue, bytes32 challengeValue
    );
    /// @notice The one step was recomputed.
    event StepVerified(uint256 indexed disputeId, uint32 value, uint32 index, bool claimCorrect);
    /// @notice A dispute resolved: winner 1 CLAIM side, 2 CHALLENGE side.
    event DisputeResolved(uint256 indexed disputeId, uint256 indexed claimId, uint8 winner);
    /// @notice A claim became final.
    event ClaimFinalized(uint256 indexed claimId);
    /// @notice A claim was proven wrong (`disputeId` = type(uint256).max for a token mismatch).
    event ClaimOverturned(uint256 indexed claimId, uint256 disputeId);
    /// @notice `amount` was credited to `account`.
    event Credited(address indexed account, uint256 amount);
    /// @notice `account` withdrew `amount`.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice `sender` committed to a token-mismatch proof (see `commitTokenProof`).
    event TokenProofCommitted(bytes32 indexed commitment, address indexed sender);
    /// @notice `account` gained a share of the claim's reward pool: by winning dispute
    ///         `disputeId`, or (disputeId = type(uint256).max) by a token-mismatch proof.
    event RewardShare(uint256 indexed claimId, address indexed account, uint256 disputeId);
    /// @notice `account` was credited `amount` from the claim's reward pool.
    event RewardPaid(uint256 indexed claimId, address indexed account, uint256 amount);
    /// @notice `amount` of the claim's forfeited bond was burned.
    event Burned(uint256 indexed claimId, uint256 amount);

    // --- errors ------------------------------------------------------------------------------

    /// @notice msg.value is not the required bond.
    error WrongBond(uint256 sent, uint256 required);
    /// @notice The model is registered under another spec version.
    error WrongSpecVersion(uint32 version);
    /// @notice Empty prompt or empty output.
    error EmptyTokens();
    /// @notice A token list's length in bytes is not a multiple of 4.
    error BadTokenBytes(uint256 length);
    /// @notice More positions than the model allows.
    error TooManyPositions(uint256 positions, uint256 maxPositions);
    /// @notice numRecords != nodesPerPosition * positions.
    error WrongRecordCount(uint256 numRecords, uint256 expected);
    /// @notice The temperature is not a finite value >= 0.
    error BadTemperature(uint32 bits);
    /// @notice No such claim.
    error UnknownClaim(uint256 claimId);
    /// @notice The claim is not pending.
    error ClaimNotPending(uint256 claimId);
    /// @notice The challenge window is over.
    error WindowClosed(uint256 claimId);
    /// @notice The challenge window is not over.
    error WindowOpen(uint256 claimId);
    /// @notice Disputes of the claim are still open.
    error DisputesOpen(uint256 claimId, uint256 count);
    /// @notice The challenger's trace root is the claim's.
    error SameRoot();
    /// @notice The output tokens given are not the claim's.
    error WrongTokens();
    /// @notice The output index is out of range.
    error OutputOutOfRange(uint256 i, uint256 count);
    /// @notice The trace's token equals the claimed one: no mismatch.
    error NoMismatch(uint256 i, uint32 token);
    /// @notice No such dispute, or it is resolved.
    error DisputeNotActive(uint256 disputeId);
    /// @notice The dispute is not at the stage this move belongs to.
    error WrongStage(Stage stage);
    /// @notice The side to move has no time left.
    error ClockExpired(uint8 side);
    /// @notice The side to move still has time.
    error ClockNotExpired(uint8 side, uint256 remaining);
    /// @notice Revealed children do not hash to the side's current node.
    error ChildrenMismatch(bytes32 computed, bytes32 expected);
    /// @notice A revealed record opening does not hash to the side's record leaf.
    error RecordMismatch(bytes32 computed, bytes32 expected);
    /// @notice A revealed chunk does not hash to the side's chunk leaf.
    error ChunkMismatch(bytes32 computed, bytes32 expected);
    /// @notice The node proof is not for the disputed node.
    error WrongNode(uint256 id, uint256 expected);
    /// @notice Only the side's owner may reveal reduction values.
    error NotSideOwner(address sender, address owner);
    /// @notice Two revealed chunks hold no differing element (cannot happen for valid reveals).
    error NoDifference();
    /// @notice The dispute is not resolved yet.
    error NotResolved(uint256 disputeId);
    /// @notice Nothing to withdraw.
    error NothingToWithdraw();
    /// @notice The transfer to the account failed.
    error TransferFailed();
    /// @notice Deployment parameters are inconsistent (extension above the clock, zero clock).
    error BadParameters();
    /// @notice No commitment of the sender to this proof from an earlier block.
    error NotCommitted(bytes32 commitment);
    /// @notice The proof's commitment was made in or after the block the claim was overturned in.
    error CommittedTooLate(uint256 committedBlock, uint256 overturnBlock);
    /// @notice The account already has a token-mismatch proof accepted for this claim.
    error AlreadyProved(uint256 claimId, address account);
    /// @notice The claim's rewards are not payable: it is not overturned.
    error NotOverturned(uint256 claimId);

    // --- construction --------------------------------------------------------------------------

    /// @notice Deploy a game on a registry and a verifier with the deployment parameters of
    ///         docs/protocol.md (bonds in wei, times in seconds).
    /// @param registry_ The model registry.
    /// @param verifier_ The one-step verifier.
    /// @param specVersion_ The spec version claims must use.
    /// @param claimBond_ B_c.
    /// @param challengeBond_ B_x.
    /// @param moveBond_ b.
    /// @param window_ W.
    /// @param clock_ C.
    /// @param extension_ E (<= C).
    /// @param feePerPosition_ The claim fee per position (wei), never refunded.
    /// @param feeRecipient_ The watchers' fund credited with the claim fees.
    constructor(
        ModelRegistry registry_,
        OneStepVerifier verifier_,
        uint32 specVersion_,
        uint256 claimBond_,
        uint256 challengeBond_,
        uint256 moveBond_,
        uint64 window_,
        uint64 clock_,
        uint64 extension_,
        uint256 feePerPosition_,
        address feeRecipient_
    ) {
        if (clock_ == 0 || extension_ > clock_) revert BadParameters();
        registry = registry_;
        verifier = verifier_;
        reader = new NodeReader();
        specVersion = specVersion_;
        claimBond = claimBond_;
        challengeBond = challengeBond_;
        moveBond = moveBond_;
        window = window_;
        clock = clock_;
        extension = extension_;
        feePerPosition = feePerPosition_;
        feeRecipient = feeRecipient_;
    }

    // =========================================================================================
    // Claims
    // =========================================================================================

    /// @notice Post a claim with the claim bond and the claim fee: msg.value must be
    ///         claimBond + feePerPosition * positions (positions = len(prompt) + len(outputTokens)
    ///         - 1). The fee is credited to feeRecipient at once and never refunded, whatever
    ///         the claim's fate (it pays the watchers' re-execution). The prompt root is computed
    ///         here.
    /// @param modelRoot A registered model of this game's spec version.
    /// @param prompt The prompt tokens (each < vocab size), 4-byte little-endian uint32 each:
    ///        exactly the data of the prompt tensor, hashed as it is (and 8x less calldata and
    ///        log data than a uint32[]).
    /// @param temperature float32 bits of the temperature (finite, >= 0).
    /// @param seed The sampling seed.
    /// @param outputTokens The generated tokens (each < vocab size), encoded as the prompt.
    /// @param traceRoot The trace root.
    /// @param numRecords nodesPerPosition * (len(prompt) + len(outputTokens) - 1).
    /// @return claimId The new claim's id.
    function postClaim(
        bytes32 modelRoot,
        bytes calldata prompt,
        uint32 temperature,
        uint256 seed,
        bytes calldata outputTokens,
        bytes32 traceRoot,
        uint64 numRecords
    ) external payable returns (uint256 claimId) {
        ModelRegistry.Model memory m = registry.model(modelRoot);
        if (m.specVersion != specVersion) revert WrongSpecVersion(m.specVersion);
        // finite and >= 0: +0, -0 or a positive finite pattern (as the verifier's _score)
        if (temperature != 0x80000000 && temperature >= 0x7F800000) revert BadTemperature(temperature);
        claimId = claimCount++;
        Claim storage c = _claims[claimId];
        c.promptLength = uint64(_tokenCount(prompt));
        c.outputLength = uint64(_tokenCount(outputTokens));
        if (c.promptLength == 0 || c.outputLength == 0) revert EmptyTokens();
        uint256 positions = c.promptLength + c.outputLength - 1;
        if (positions > m.maxPositions) revert TooManyPositions(positions, m.maxPositions);
        uint256 required = claimBond + feePerPosition * positions;
        if (msg.value != required) revert WrongBond(msg.value, required);
        _credit(feeRecipient, required - claimBond);
        if (numRecords != positions * m.nodesPerPosition) {
            revert WrongRecordCount(numRecords, positions * m.nodesPerPosition);
        }
        reader.checkTokens(prompt, outputTokens, m.vocabSize);

        c.claimant = msg.sender;
        c.deadline = uint64(block.timestamp) + window;
        c.status = ClaimStatus.Pending;
        c.modelRoot = modelRoot;
        c.promptRoot = Bisection.tokenRoot(prompt);
        c.traceRoot = traceRoot;
        c.tokensHash = keccak256(outputTokens);
        c.numRecords = numRecords;
        c.nodesPerPosition = m.nodesPerPosition;
        c.tokenNode = m.tokenNode;
        c.temperature = temperature;
        c.seed = seed;
        _emitPosted(claimId, c, prompt, outputTokens);
    }

    /// @dev The ClaimPosted event, from storage (a separate frame keeps postClaim's stack small).
    function _emitPosted(
        uint256 claimId,
        Claim storage c,
        bytes calldata prompt,
        bytes calldata outputTokens
    ) private {
        emit ClaimPosted(
            claimId,
            c.modelRoot,
            msg.sender,
            prompt,
            c.temperature,
            c.seed,
            outputTokens,
            c.traceRoot
        );
    }

    /// @notice Finalise a pending claim once W has passed and no dispute is open; credits the
    ///         claim bond back to the claimant. O(1) (invariant G6).
    /// @param claimId The claim.
    function finalize(uint256 claimId) external {
        Claim storage c = _pendingClaim(claimId);
        if (block.timestamp < c.deadline) revert WindowOpen(claimId);
        if (c.openDisputes != 0) revert DisputesOpen(claimId, c.openDisputes);
        c.status = ClaimStatus.Finalized;
        emit ClaimFinalized(claimId);
        _credit(c.claimant, claimBond);
    }

    /// @notice Commit to a token-mismatch proof, to be revealed with `proveTokenMismatch` in a
    ///         later block: commitment = keccak256(abi.encode(sender, claimId, i, recordRoot)).
    ///         It binds the beneficiary (so copied proof calldata is worthless to anyone else)
    ///         and the proof's content (so it cannot be made for a claim without re-executing
    ///         it). Idempotent: the first block a commitment was made in is kept.
    /// @param commitment The commitment.
    function commitTokenProof(bytes32 commitment) external {
        if (committedAt[commitment] != 0) return;
        committedAt[commitment] = block.number;
        emit TokenProofCommitted(commitment, msg.sender);
    }

    /// @notice Prove that output token i of a claim is not the output of its sample record
    ///         (position len(prompt) - 1 + i, the token node): open that record against the
    ///         trace root and element 0 of its output. Needs the sender's commitment
    ///         (`commitTokenProof`) from an earlier block; within W; one accepted proof per
    ///         sender and claim. On a pending claim it overturns it. On an overturned claim it
    ///         counts if it was committed in a block before the overturn block. Either way it
    ///         earns the sender one share of the claim's reward pool (`collectReward`).
    /// @param claimId The claim (pending or overturned, within W).
    /// @param outputTokens The claim's output tokens as posted (checked against the stored hash).
    /// @param i The output index.
    /// @param recordRoot The sample record's output root.
    /// @param recordSiblings Its path in the trace tree.
    /// @param chunk The output's (only) chunk.
    /// @param chunkSiblings Its path (empty).
    function proveTokenMismatch(
        uint256 claimId,
        bytes calldata outputTokens,
        uint256 i,
        bytes32 recordRoot,
        bytes32[] calldata recordSiblings,
        bytes calldata chunk,
        bytes32[] calldata chunkSiblings
    ) external {
        Claim storage c = _committedProof(claimId, i, recordRoot);
        if (keccak256(outputTokens) != c.tokensHash) revert WrongTokens();
        if (i >= c.outputLength) revert OutputOutOfRange(i, c.outputLength);
        uint32 token = reader.sampledToken(
            c.traceRoot,
            c.numRecords,
            c.nodesPerPosition,
            c.promptLength - 1 + i,
            c.tokenNode,
            recordRoot,
            recordSiblings,
            chunk,
            chunkSiblings
        );
        if (token == Bisection.word(outputTokens, i)) revert NoMismatch(i, token);
        _tokenProved[claimId][msg.sender] = true;
        _win(c, claimId, msg.sender, NONE);
    }

    /// @dev proveTokenMismatch's claim and commitment checks (a separate frame keeps its stack
    ///      small): within W, not finalised, the sender's commitment from an earlier block (and
    ///      from before the overturn block), no proof of the sender accepted yet.
    function _committedProof(uint256 claimId, uint256 i, bytes32 recordRoot)
        private
        view
        returns (Claim storage c)
    {
        c = _claims[claimId];
        if (c.status == ClaimStatus.None) revert UnknownClaim(claimId);
        if (c.status == ClaimStatus.Finalized) revert ClaimNotPending(claimId);
        if (block.timestamp >= c.deadline) revert WindowClosed(claimId);
        bytes32 commitment = keccak256(abi.encode(msg.sender, claimId, i, recordRoot));
        uint256 made = committedAt[commitment];
        if (made == 0 || made >= block.number) revert NotCommitted(commitment);
        if (c.status == ClaimStatus.Overturned && made >= c.overturnBlock) {
            revert CommittedTooLate(made, c.overturnBlock);
        }
        if (_tokenProved[claimId][msg.sender]) revert AlreadyProved(claimId, msg.sender);
    }

    /// @notice Credit `account` its reward from an overturned claim once the claim is settled
    ///         (W has passed and no dispute of it is open, so the shares are final, G8):
    ///         shares * (pool / wins), pool = claimBond / 2. The first call for a claim burns
    ///         the pool's rounding dust. Anyone may call it for anyone; O(1); a second call
    ///         credits nothing.
    /// @param claimId The claim.
    /// @param account The challenger or token prover.
    function collectReward(uint256 claimId, address account) external {
        Claim storage c = _claims[claimId];
        if (c.status != ClaimStatus.Overturned) revert NotOverturned(claimId);
        if (block.timestamp < c.deadline) revert WindowOpen(claimId);
        if (c.openDisputes != 0) revert DisputesOpen(claimId, c.openDisputes);
        uint256 pool = claimBond / 2;
        uint256 unit = pool / c.wins;
        if (!c.dustBurned) {
            c.dustBurned = true;
            _burn(claimId, pool - unit * c.wins);
        }
        uint256 amount = rewardShares[claimId][account] * unit;
        if (amount == 0) return;
        delete rewardShares[claimId][account];
        emit RewardPaid(claimId, account, amount);
        _credit(account, amount);
    }

    // =========================================================================================
    // Disputes
    // =========================================================================================

    /// @notice Open a dispute against a pending claim within W, with the challenge bond.
    /// @param claimId The claim.
    /// @param challengeRoot The challenger's trace root over the same number of records.
    /// @return disputeId The new dispute's id; the claim side moves first.
    function openDispute(uint256 claimId, bytes32 challengeRoot)
        external
        payable
        returns (uint256 disputeId)
    {
        if (msg.value != challengeBond) revert WrongBond(msg.value, challengeBond);
        Claim storage c = _pendingClaim(claimId);
        if (block.timestamp >= c.deadline) revert WindowClosed(claimId);
        if (challengeRoot == c.traceRoot) revert SameRoot();
        c.openDisputes += 1;
        disputeId = disputeCount++;
        Dispute storage d = _disputes[disputeId];
        d.claimId = claimId;
        d.challenger = msg.sender;
        d.turnStart = uint64(block.timestamp);
        d.clock = [clock, clock];
        d.node = [c.traceRoot, challengeRoot];
        uint256 depth = MerkleProofs.depthFor(c.numRecords);
        d.height = uint64(depth);
        d.stage = depth == 0 ? Stage.Record : Stage.Trace;
        emit DisputeOpened(disputeId, claimId, msg.sender, challengeRoot);
    }

    /// @notice Levels 1 and 2 (stages Trace, Chunks): reveal the two children of the side's
    ///         current node. Any sender, with the move bond; reverts unless they hash to it
    ///         (at the top of the trace tree: to the list root over numRecords).
    /// @param disputeId The dispute.
    /// @param left The left child hash.
    /// @param right The right child hash.
    function revealChildren(uint256 disputeId, bytes32 left, bytes32 right) external payable {
        Dispute storage d = _active(disputeId);
        Stage stage = d.stage;
        if (stage != Stage.Trace && stage != Stage.Chunks) revert WrongStage(stage);
        uint8 side = _startMove(d);
        bytes32 parent = MerkleProofs.nodeHash(left, right);
        if (stage == Stage.Trace) {
            uint256 n = _claims[d.claimId].numRecords;
            if (d.height == MerkleProofs.depthFor(n)) parent = MerkleProofs.listRoot(n, parent);
        }
        if (parent != d.node[side]) revert ChildrenMismatch(parent, d.node[side]);
        _endMove(d, disputeId, stage == Stage.Trace ? 1 : 2, side, abi.encode(left, right));
        if (side == CLAIM) {
            d.pending = [left, right];
            return;
        }
        // G1: go left iff the left children differ
        bool goRight = d.pending[0] == left;
        d.node = goRight ? [d.pending[1], right] : [d.pending[0], left];
        d.index = 2 * d.index + (goRight ? 1 : 0);
        d.height -= 1;
        if (d.height == 0) _leafReached(d, disputeId, stage);
    }

    /// @notice Level 1, stage Record: open the side's record leaf (t, n) to its output tensor's
    ///         (dtype, length, chunk tree root). Any sender, with the move bond. The claim side's
    ///         move also proves node n's descriptor against the program root. A side whose dtype
    ///         or length is not node n's at t loses at once.
    /// @param disputeId The dispute.
    /// @param dtype 0 float32, 1 uint32.
    /// @param length Number of elements.
    /// @param tree Root of the chunk tree.
    /// @param node Node n's descriptor and program proof (read on the claim side's move only).
    function openRecord(
        uint256 disputeId,
        uint8 dtype,
        uint64 length,
        bytes32 tree,
        OneStepVerifier.NodeProof calldata node
    ) external payable {
        Dispute storage d = _active(disputeId);
        if (d.stage != Stage.Record) revert WrongStage(d.stage);
        uint8 side = _startMove(d);
        Claim storage c = _claims[d.claimId];
        bytes32 output = MerkleProofs.tensorRoot(dtype, length, tree);
        bytes32 leaf = MerkleProofs.recordLeaf(d.position, d.nodeId, output);
        if (c.numRecords == 1) leaf = MerkleProofs.listRoot(1, leaf);
        if (leaf != d.node[side]) revert RecordMismatch(leaf, d.node[side]);
        if (side == CLAIM) _loadNode(d, c, node);
        _endMove(d, disputeId, 1, side, abi.encode(dtype, length, tree, output));
        // level 2 needs the shape of n at t (docs/ir.md); a wrong one loses at once
        if (dtype != (_argmaxLike(d) ? 1 : 0) || length != d.length) {
            return _resolve(d, disputeId, 1 - side);
        }
        d.node[side] = tree;
        if (side == CLAIM) {
            d.pending[0] = output;
            return;
        }
        emit LevelCompleted(
            disputeId, 1, d.position * c.nodesPerPosition + d.nodeId, d.pending[0], output
        );
        uint256 depth = MerkleProofs.depthFor((uint256(length) + 255) / 256);
        d.height = uint64(depth);
        d.index = 0;
        d.stage = depth == 0 ? Stage.Chunk : Stage.Chunks;
    }

    /// @notice Level 2, stage Chunk: reveal the side's 1 KiB chunk. Any sender, with the move
    ///         bond. The challenge side's move passes the claim side's chunk again (it is in the
    ///         claim side's Moved event) so that the first differing element is found here. A
    ///         chunk with non-zero padding after the tensor's end loses at once.
    /// @param disputeId The dispute.
    /// @param chunk The side's chunk.
    /// @param claimChunk The claim side's chunk (challenge side only; ignored otherwise).
    function revealChunk(uint256 disputeId, bytes calldata chunk, bytes calldata claimChunk)
        external
        payable
    {
        Dispute storage d = _active(disputeId);
        if (d.stage != Stage.Chunk) revert WrongStage(d.stage);
        uint8 side = _startMove(d);
        bytes32 leaf = MerkleProofs.chunkLeaf(chunk);
        if (leaf != d.node[side]) revert ChunkMismatch(leaf, d.node[side]);
        if (side == CHALLENGE) {
            bytes32 claimLeaf = MerkleProofs.chunkLeaf(claimChunk);
            if (claimLeaf != d.node[CLAIM]) revert ChunkMismatch(claimLeaf, d.node[CLAIM]);
        }
        _endMove(d, disputeId, 2, side, chunk);
        uint256 used = uint256(d.length) - uint256(d.index) * 256;
        if (used > 256) used = 256;
        if (!Bisection.zeroFrom(chunk, used * 4)) {
            return _resolve(d, disputeId, 1 - side);
        }
        if (side == CLAIM) return;
        uint256 j = Bisection.firstDifference(claimChunk, chunk, used);
        if (j == 256) revert NoDifference();
        d.element = uint64(d.index * 256 + j);
        d.value = [Bisection.word(claimChunk, j), Bisection.word(chunk, j)];
        emit LevelCompleted(
            disputeId, 2, d.element, bytes32(uint256(d.value[0])), bytes32(uint256(d.value[1]))
        );
        _startReduction(d);
    }

    /// @notice Level 3, stage Reduction: reveal the two children (value, index) of the side's
    ///         current reduction-tree node (indices only matter for ARGMAX / SAMPLE). They must
    ///         combine to the node's value (add, max, or the argmax step); a side whose reveal
    ///         does not loses at once. Only the side's owner (the claimant for the claim side,
    ///         the challenger for the challenge side) may move here: these values are not bound
    ///         by any hash, so a stranger's consistent but wrong reveal could sink the side.
    /// @param disputeId The dispute.
    /// @param leftValue Left child's float32 bits.
    /// @param leftIndex Left child's index.
    /// @param rightValue Right child's float32 bits.
    /// @param rightIndex Right child's index.
    function revealReduction(
        uint256 disputeId,
        uint32 leftValue,
        uint32 leftIndex,
        uint32 rightValue,
        uint32 rightIndex
    ) external payable {
        Dispute storage d = _active(disputeId);
        if (d.stage != Stage.Reduction) revert WrongStage(d.stage);
        uint8 side = _startMove(d);
        address owner = side == CLAIM ? _claims[d.claimId].claimant : d.challenger;
        if (msg.sender != owner) revert NotSideOwner(msg.sender, owner);
        if (!_argmaxLike(d)) (leftIndex, rightIndex) = (0, 0);
        _endMove(d, disputeId, 3, side, abi.encode(leftValue, leftIndex, rightValue, rightIndex));
        if (!_combines(d, side, leftValue, leftIndex, rightValue, rightIndex)) {
            return _resolve(d, disputeId, 1 - side);
        }
        bytes32 packed = bytes32(
            (uint256(leftValue) << 96) | (uint256(leftIndex) << 64) | (uint256(rightValue) << 32)
                | uint256(rightIndex)
        );
        if (side == CLAIM) {
            d.pending[0] = packed;
            return;
        }
        _descendReduction(d, disputeId, uint256(d.pending[0]), uint256(packed));
    }

    /// @notice Level 4: recompute the disputed value with the OneStepVerifier (context from the
    ///         claim and its model, the step from the dispute) and resolve: the claim side loses
    ///         iff its value (and index) differ. Any sender, no bond, no bounty, while the claim
    ///         side's clock runs.
    /// @param disputeId The dispute.
    /// @param node Node n's descriptor and program proof.
    /// @param sources The operand proofs (see OneStepVerifier.computeStep).
    /// @param token The input token's proof (or empty).
    /// @param weightCount Number of weights of the model (bound by the weights root).
    function step(
        uint256 disputeId,
        OneStepVerifier.NodeProof calldata node,
        OneStepVerifier.SourceProof[] calldata sources,
        OneStepVerifier.SourceProof calldata token,
        uint256 weightCount
    ) external {
        Dispute storage d = _active(disputeId);
        if (d.stage != Stage.Step) revert WrongStage(d.stage);
        _requireTime(d);
        if (node.id != d.nodeId) revert WrongNode(node.id, d.nodeId);
        OneStepVerifier.Step memory s;
        s.element = d.element;
        if (d.op == OP_REDUCE || d.op == OP_SAMPLE) {
            s.kind = 1; // LEAF
            s.leaf = d.index;
        }
        (uint32 v, uint32 i) =
            verifier.computeStep(_context(d, weightCount), node, s, sources, token);
        bool claimCorrect = _argmaxLike(d)
            ? i == d.valueIndex[CLAIM] && (!d.valueKnown || v == d.value[CLAIM])
            : v == d.value[CLAIM];
        emit StepVerified(disputeId, v, i, claimCorrect);
        _resolve(d, disputeId, claimCorrect ? CLAIM : CHALLENGE);
    }

    /// @notice Resolve a dispute against the side to move once its clock has run out. Anyone.
    /// @param disputeId The dispute.
    function timeout(uint256 disputeId) external {
        Dispute storage d = _active(disputeId);
        uint8 side = d.toMove;
        uint256 elapsed = block.timestamp - d.turnStart;
        if (elapsed <= d.clock[side]) revert ClockNotExpired(side, d.clock[side] - elapsed);
        _resolve(d, disputeId, 1 - side);
    }

    /// @notice Credit `account` its own move bonds on the winning side of a resolved dispute
    ///         (the losing side's bonds went to the winning side's opener at resolution). Anyone
    ///         may call it for anyone; O(1); a second call credits nothing.
    /// @param disputeId The resolved dispute.
    /// @param account The mover.
    function settle(uint256 disputeId, address account) external {
        Dispute storage d = _disputes[disputeId];
        if (d.stage != Stage.Resolved) revert NotResolved(disputeId);
        uint8 w = d.winner - 1;
        uint256 amount = _paid[disputeId][account][w];
        delete _paid[disputeId][account];
        _credit(account, amount);
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

    /// @notice A claim.
    /// @param claimId The claim.
    /// @return The claim.
    function getClaim(uint256 claimId) external view returns (Claim memory) {
        return _claims[claimId];
    }

    /// @notice A dispute.
    /// @param disputeId The dispute.
    /// @return The dispute.
    function getDispute(uint256 disputeId) external view returns (Dispute memory) {
        return _disputes[disputeId];
    }

    /// @notice What `collectReward` would credit `account` now (0 until the claim is settled).
    /// @param claimId The claim.
    /// @param account The challenger or token prover.
    /// @return The amount.
    function reward(uint256 claimId, address account) external view returns (uint256) {
        Claim storage c = _claims[claimId];
        if (
            c.status != ClaimStatus.Overturned || block.timestamp < c.deadline
                || c.openDisputes != 0
        ) return 0;
        return rewardShares[claimId][account] * ((claimBond / 2) / c.wins);
    }

    /// @notice What `settle` would credit `account` for a resolved dispute (0 if unresolved).
    /// @param disputeId The dispute.
    /// @param account The mover.
    /// @return The amount.
    function owed(uint256 disputeId, address account) external view returns (uint256) {
        Dispute storage d = _disputes[disputeId];
        if (d.stage != Stage.Resolved) return 0;
        uint8 w = d.winner - 1;
        return _paid[disputeId][account][w];
    }

    // =========================================================================================
    // Internals
    // =========================================================================================

    /// @dev Number of 4-byte tokens in `tokens`.
    function _tokenCount(bytes calldata tokens) private pure returns (uint256) {
        if (tokens.length % 4 != 0) revert BadTokenBytes(tokens.length);
        return tokens.length / 4;
    }

    function _pendingClaim(uint256 claimId) private view returns (Claim storage c) {
        c = _claims[claimId];
        if (c.status == ClaimStatus.None) revert UnknownClaim(claimId);
        if (c.status != ClaimStatus.Pending) revert ClaimNotPending(claimId);
    }

    function _active(uint256 disputeId) private view returns (Dispute storage d) {
        d = _disputes[disputeId];
        if (d.stage == Stage.None || d.stage == Stage.Resolved) revert DisputeNotActive(disputeId);
    }

    /// @dev G4: the side to move may move while its clock has time left.
    function _requireTime(Dispute storage d) private view returns (uint256 elapsed) {
        elapsed = block.timestamp - d.turnStart;
        if (elapsed > d.clock[d.toMove]) revert ClockExpired(d.toMove);
    }

    function _startMove(Dispute storage d) private view returns (uint8 side) {
        if (msg.value != moveBond) revert WrongBond(msg.value, moveBond);
        _requireTime(d);
        return d.toMove;
    }

    /// @dev Stop the mover's clock, start the other's (raised to E if below it, G4), account for
    ///      the bond (G5) and log the move.
    function _endMove(
        Dispute storage d,
        uint256 disputeId,
        uint8 level,
        uint8 side,
        bytes memory data
    ) private {
        uint64 left = d.clock[side] - uint64(block.timestamp - d.turnStart);
        d.clock[side] = left;
        uint8 other = 1 - side;
        if (d.clock[other] < extension) d.clock[other] = extension;
        d.toMove = other;
        d.turnStart = uint64(block.timestamp);
        _paid[disputeId][msg.sender][side] += moveBond;
        d.moves += 1;
        emit Moved(disputeId, level, d.index, side, data, msg.sender, left);
    }

    /// @dev End of a descent (height 0) at index d.index. Beyond the last real leaf both trees
    ///      must hold EMPTY: the claim side loses iff its leaf is not EMPTY.
    function _leafReached(Dispute storage d, uint256 disputeId, Stage stage) private {
        Claim storage c = _claims[d.claimId];
        uint256 count = stage == Stage.Trace ? c.numRecords : (uint256(d.length) + 255) / 256;
        if (d.index >= count) {
            return _resolve(d, disputeId, d.node[CLAIM] == bytes32(0) ? CLAIM : CHALLENGE);
        }
        if (stage == Stage.Trace) {
            d.position = uint64(d.index / c.nodesPerPosition);
            d.nodeId = uint64(d.index % c.nodesPerPosition);
            d.stage = Stage.Record;
        } else {
            d.stage = Stage.Chunk;
        }
    }

    /// @dev The claim side's Record move: prove node n and read its shape at t.
    function _loadNode(Dispute storage d, Claim storage c, OneStepVerifier.NodeProof calldata np)
        private
    {
        if (np.id != d.nodeId) revert WrongNode(np.id, d.nodeId);
        ModelRegistry.Model memory m = registry.model(c.modelRoot);
        NodeReader.Shape memory s =
            reader.provenShapeAt(m.programRoot, m.nodesPerPosition, np, d.position);
        d.op = s.op;
        d.reducer = s.reducer;
        d.length = s.length;
        d.width = s.width;
    }

    function _argmaxLike(Dispute storage d) private view returns (bool) {
        return d.op == OP_SAMPLE
            || (d.op == OP_REDUCE && d.reducer == RED_ARGMAX);
    }

    /// @dev G2: level 3 starts from the two element values found at level 2.
    function _startReduction(Dispute storage d) private {
        bool reduces = d.op == OP_REDUCE || d.op == OP_SAMPLE;
        d.index = 0;
        if (reduces && _argmaxLike(d)) {
            // the element is the argmax index; the root's value is not committed anywhere
            d.valueIndex = d.value;
            d.value = [uint32(0), uint32(0)];
            d.valueKnown = false;
        } else {
            d.valueKnown = true;
        }
        uint256 depth = reduces ? MerkleProofs.depthFor(d.width) : 0;
        d.height = uint64(depth);
        if (depth == 0) {
            d.stage = Stage.Step;
        } else {
            d.stage = Stage.Reduction;
        }
    }

    /// @dev Level 3: whether the revealed children combine to the side's current value.
    function _combines(
        Dispute storage d,
        uint8 side,
        uint32 lv,
        uint32 li,
        uint32 rv,
        uint32 ri
    ) private view returns (bool) {
        (bool ok, uint32 v, uint32 i) = reader.combine(d.reducer, lv, li, rv, ri);
        if (!ok) return false;
        if (!_argmaxLike(d)) return v == d.value[side];
        return i == d.valueIndex[side] && (!d.valueKnown || v == d.value[side]);
    }

    /// @dev Level 3, G1: descend left iff the left (value, index) pairs differ.
    function _descendReduction(Dispute storage d, uint256 disputeId, uint256 theirs, uint256 mine)
        private
    {
        bool goRight = (theirs >> 64) == (mine >> 64);
        uint256 shift = goRight ? 0 : 64;
        d.value = [uint32(theirs >> (shift + 32)), uint32(mine >> (shift + 32))];
        d.valueIndex = [uint32(theirs >> shift), uint32(mine >> shift)];
        d.valueKnown = true;
        d.index = 2 * d.index + (goRight ? 1 : 0);
        d.height -= 1;
        if (d.height == 0) _enterStep(d, disputeId);
    }

    function _enterStep(Dispute storage d, uint256 disputeId) private {
        d.stage = Stage.Step;
        emit LevelCompleted(
            disputeId,
            3,
            d.index,
            bytes32((uint256(d.value[0]) << 32) | d.valueIndex[0]),
            bytes32((uint256(d.value[1]) << 32) | d.valueIndex[1])
        );
    }

    function _context(Dispute storage d, uint256 weightCount)
        private
        view
        returns (OneStepVerifier.Context memory ctx)
    {
        Claim storage c = _claims[d.claimId];
        ModelRegistry.Model memory m = registry.model(c.modelRoot);
        ctx.programRoot = m.programRoot;
        ctx.nodesPerPosition = m.nodesPerPosition;
        ctx.weightsRoot = m.weightsRoot;
        ctx.weightCount = weightCount;
        ctx.traceRoot = c.traceRoot; // records before r are identical in both traces (G1)
        ctx.recordCount = c.numRecords;
        ctx.promptRoot = c.promptRoot;
        ctx.promptLength = c.promptLength;
        ctx.temperature = c.temperature;
        ctx.seed = c.seed;
        ctx.tokenNode = m.tokenNode;
        ctx.position = d.position;
    }

    /// @dev Resolve for `winner` (G5, G6): the winning side's opener takes the challenge bond
    ///      (the challenger its own back, or the claimant the failed challenger's) and every
    ///      move bond paid on the losing side (sides alternate from CLAIM, so the claim side
    ///      paid (moves + 1) / 2 of them); a winning challenge earns a reward share (G8).
    function _resolve(Dispute storage d, uint256 disputeId, uint8 winner) private {
        Claim storage c = _claims[d.claimId];
        d.stage = Stage.Resolved;
        d.winner = winner + 1;
        c.openDisputes -= 1;
        emit DisputeResolved(disputeId, d.claimId, winner + 1);
        uint256 lost = winner == CLAIM ? d.moves / 2 : (uint256(d.moves) + 1) / 2;
        address opener = winner == CLAIM ? c.claimant : d.challenger;
        _credit(opener, challengeBond + lost * moveBond);
        if (winner == CHALLENGE) _win(c, d.claimId, d.challenger, disputeId);
    }

    /// @dev A successful challenge (`disputeId`, or NONE for a token proof): one reward share;
    ///      if the claim is still pending it is overturned, half its bond burned (G5, G8).
    function _win(Claim storage c, uint256 claimId, address account, uint256 disputeId) private {
        rewardShares[claimId][account] += 1;
        c.wins += 1;
        emit RewardShare(claimId, account, disputeId);
        if (c.status != ClaimStatus.Pending) return;
        c.status = ClaimStatus.Overturned;
        c.overturnBlock = uint64(block.number);
        emit ClaimOverturned(claimId, disputeId);
        _burn(claimId, claimBond - claimBond / 2);
    }

    function _burn(uint256 claimId, uint256 amount) private {
        if (amount == 0) return;
        burned += amount;
        emit Burned(claimId, amount);
    }

    function _credit(address account, uint256 amount) private {
        if (amount == 0) return;
        credit[account] += amount;
        emit Credited(account, amount);
    }
}
