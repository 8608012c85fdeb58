// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {MerkleProofs} from "./MerkleProofs.sol";
import {SoftFloat32} from "./SoftFloat32.sol";

/// @title OneStepVerifier: re-executes ONE scalar step of a refute trace against Merkle proofs.
/// @notice The last move of a dispute: the game has narrowed a disagreement to one step of one
///         record (position t, node n) of a trace. This contract recomputes that step with the
///         canonical arithmetic (SoftFloat32) from operand values it opens itself against the
///         committed roots, and returns the correct value; `verifyStep` says whether a claimed
///         value is it. The steps (docs/ir.md, `refute.engine.steps`):
///         - ELEMENT e of a MAP node: fn(operand_1[A_1(e)], ...).
///         - ELEMENT e of a CACHE_APPEND node: rows < t copy element e of record (t - 1, n); row t
///           is fn(operand_1[A_1(row coords)]).
///         - LEAF k of element e of a REDUCE node: fn(operands at (coords(e), k)) for k < K, the
///           reducer's identity for K <= k < width (+0 SUM, -inf MAX, (-inf, k) ARGMAX).
///         - LEAF k of a SAMPLE node: score_k = logit_k (temperature 0) or
///           add(div(logit_k, T), g(seed, t, k)) (spec section 6), with index k.
///         - TREE node (level, index) of element e of a REDUCE or SAMPLE node: combine(left, right)
///           of two child values the game agreed on (add, max, or the argmax step).
/// @dev Invariants:
///      - V1 (proofs, not words): every operand value is read from a chunk proven against a root
///        the caller cannot choose: the record (t, src) output root proven against the trace
///        root, the weight leaf proven against the weights root, the prompt root, or a constant
///        of the node descriptor, itself proven against the program root. A data-dependent
///        read (an operand with a selector) first opens its selector, the one uint32 element
///        of record (t, selector), against the trace root, then the element at the offset it
///        gives against the source's root.
///      - V2 (no wrong true): malformed input reverts with a named custom error; `verifyStep`
///        returns true only if the claimed bits equal the recomputed bits.
///      - V3 (bounded): every loop is bounded by calldata lengths (proof depth, shape rank).
///      - V4 (canonical operands): every float operand, constant and child value must carry the
///        canonical NaN only (`SoftFloat32.requireCanonical`).
contract OneStepVerifier {
    // --- types -------------------------------------------------------------------------------

    /// @notice What the game fixed when the claim was made, plus the disputed position.
    /// @dev `nodesPerPosition` is both the number of program nodes (the program list's count)
    ///      and the trace's records per position. `tokenNode` is `Program.token_node`, the
    ///      SAMPLE node whose output at t - 1 is the input token at t >= promptLength; it is not
    ///      inside the program root, so the game must bind it with the claim (with the model).
    ///      The verifier only checks that the token record is a one-element uint32 tensor.
    struct Context {
        bytes32 programRoot;
        uint256 nodesPerPosition;
        bytes32 weightsRoot;
        uint256 weightCount;
        bytes32 traceRoot;
        uint256 recordCount;
        bytes32 promptRoot;
        uint256 promptLength;
        uint32 temperature; // float32 bits of the request's temperature
        uint256 seed;
        uint256 tokenNode;
        uint256 position; // t
    }

    /// @notice Node `id` of the program: its ABI descriptor (docs/ir.md) and its program proof.
    struct NodeProof {
        uint256 id;
        bytes descriptor;
        bytes32[] siblings;
    }

    /// @notice Which step of record (t, node.id): `kind` 0 ELEMENT, 1 LEAF, 2 TREE.
    /// @dev ELEMENT uses `element`; LEAF uses `element`, `leaf`; TREE uses `element`, `level`
    ///      (1 = combining two leaves), `index` (node within the level) and the two children
    ///      (`*Index` only for ARGMAX and SAMPLE).
    struct Step {
        uint8 kind;
        uint256 element;
        uint256 leaf;
        uint256 level;
        uint256 index;
        uint32 leftValue;
        uint32 leftIndex;
        uint32 rightValue;
        uint32 rightIndex;
    }

    /// @notice An opened value: a tensor root proven in a list, and one element of that tensor.
    /// @dev For a NODE operand: `root` is the output root of record (t, src), `rootSiblings` its
    ///      trace path. For a WEIGHT operand: `root` is the weight's tensor root, `name` and
    ///      `shape` its leaf fields, `rootSiblings` its path in the weights list. For the token at
    ///      t < promptLength only `chunk`/`siblings` (against the prompt root) are read; at
    ///      t >= promptLength `root`/`rootSiblings` prove record (t - 1, tokenNode). For a cache
    ///      row < t, `root`/`rootSiblings` prove record (t - 1, n). `length` is the tensor's
    ///      element count (checked by the root). CONST operands take an empty SourceProof.
    struct SourceProof {
        bytes32 root;
        bytes32[] rootSiblings;
        string name;
        uint64[] shape;
        uint256 length;
        bytes chunk;
        bytes32[] siblings;
    }

    /// @dev The ABI layout of a node descriptor, `refute.engine.ir.NODE_ABI`.
    struct Operand {
        uint8 src;
        uint256 index;
        int64[] strides;
        int64 offset;
        int64 tStride;
        int64 tokenStride;
    }

    /// @dev See `Operand`.
    struct Node {
        string name;
        uint8 op;
        int64[] shape;
        Operand[] operands;
        uint8 fn;
        uint8 reducer;
        int64 reduceLen;
        int64 layer;
    }

    /// @dev Working state of one step (kept in memory to stay clear of the stack limit).
    struct Frame {
        Node node;
        uint256 t;
        uint256[] coords; // the index of the element in the (resolved) output shape
        uint256 reduceLen; // K, resolved
        uint256 width; // the reduction tree's padded width
        bool haveToken;
        uint256 token;
        uint256 id; // the node's id
    }

    // --- constants ---------------------------------------------------------------------------

    uint8 internal constant OP_MAP = 0;
    uint8 internal constant OP_REDUCE = 1;
    uint8 internal constant OP_CACHE_APPEND = 2;
    uint8 internal constant OP_SAMPLE = 3;
    uint8 internal constant KIND_ELEMENT = 0;
    uint8 internal constant KIND_LEAF = 1;
    uint8 internal constant KIND_TREE = 2;
    uint8 internal constant SRC_NODE = 0;
    uint8 internal constant SRC_WEIGHT = 1;
    uint8 internal constant SRC_CONST = 2;
    uint8 internal constant RED_NONE = 0;
    uint8 internal constant RED_SUM = 1;
    uint8 internal constant RED_MAX = 2;
    uint8 internal constant RED_ARGMAX = 3;
    uint8 internal constant FN_LAST = 17; // RSQRT
    uint256 private constant MAX_DIM = 1 << 62;
    /// @dev An operand's `index` is its source id in the low 32 bits and, above them, its
    ///      selector + 1 (0: none): token_stride then multiplies the one uint32 element of
    ///      record (t, selector) instead of the input token (docs/ir.md).
    uint256 private constant SELECT_SHIFT = 32;

    // --- errors ------------------------------------------------------------------------------

    /// @notice The node's `op` is not MAP, REDUCE, CACHE_APPEND or SAMPLE.
    error UnknownOp(uint8 op);
    /// @notice The node's `fn` is not one of the 18 spec functions.
    error UnknownFn(uint8 fn);
    /// @notice A REDUCE node without a known reducer (SUM, MAX, ARGMAX).
    error UnknownReducer(uint8 reducer);
    /// @notice An operand source other than NODE, WEIGHT, CONST.
    error UnknownSource(uint8 src);
    /// @notice The step kind is unknown or does not fit the node's op.
    error WrongStepKind(uint8 kind, uint8 op);
    /// @notice The node has the wrong number of operands for its op / fn.
    error WrongOperandCount(uint256 count, uint256 expected);
    /// @notice The caller passed a different number of source proofs than the step needs.
    error WrongSourceCount(uint256 count, uint256 expected);
    /// @notice An operand's stride list does not match the node's index space.
    error WrongStrideCount(uint256 count, uint256 expected);
    /// @notice A dimension (or reduce_len) is neither positive nor T (-1), or a cache's first
    ///         dimension is not T.
    error BadShape(int256 dim);
    /// @notice The element is outside the node's output at this position.
    error ElementOutOfRange(uint256 element, uint256 size);
    /// @notice The leaf is outside the padded reduction tree.
    error LeafOutOfRange(uint256 leaf, uint256 width);
    /// @notice The tree node (level, index) is outside the reduction tree.
    error TreeNodeOutOfRange(uint256 level, uint256 index);
    /// @notice Record (position, node) is not in the trace.
    error RecordOutOfRange(uint256 position, uint256 nodeId, uint256 recordCount);
    /// @notice An affine index map gives a negative flat index.
    error NegativeIndex(int256 index);
    /// @notice A NODE operand reads a node that is not earlier in the program.
    error SourceNotEarlier(uint256 source, uint256 nodeId);
    /// @notice A CONST operand's pattern does not fit 32 bits.
    error BadConstant(uint256 bits);
    /// @notice A weight's proven length is not the product of its shape.
    error WeightLengthMismatch(uint256 length, uint256 expected);
    /// @notice The temperature is not a finite value >= 0.
    error BadTemperature(uint32 bits);
    /// @notice No input token exists at position 0 with an empty prompt.
    error NoInputToken(uint256 position);
    /// @notice A reduction wider than 2^32 leaves (its indices would not be uint32).
    error ReductionTooWide(uint256 width);

    // --- external API ------------------------------------------------------------------------

    /// @notice Recompute one step of record (ctx.position, node.id).
    /// @param ctx The claim's roots and request parameters, and the position t.
    /// @param node The node descriptor and its proof against ctx.programRoot.
    /// @param step Which step (ELEMENT, LEAF, TREE) and, for TREE, the two child values.
    /// @param sources One SourceProof per operand of the node (CONST: empty) for ELEMENT and
    ///        LEAF steps with k < K; exactly one (record (t - 1, n)) for a cache row < t; none for
    ///        padding leaves and TREE steps.
    /// @param token The input token's proof when an operand has a token_stride (for an operand
    ///        with a selector: the selector record's root, trace path and element); else ignored.
    /// @return value The step's value (float32 bits).
    /// @return index The step's index for ARGMAX / SAMPLE leaves and tree nodes, else 0.
    function computeStep(
        Context calldata ctx,
        NodeProof calldata node,
        Step calldata step,
        SourceProof[] calldata sources,
        SourceProof calldata token
    ) external view returns (uint32 value, uint32 index) {
        return _compute(ctx, node, step, sources, token);
    }

    /// @notice Whether (claimedValue, claimedIndex) is the correct result of the step; reverts
    ///         on malformed input exactly as `computeStep`.
    /// @param ctx See `computeStep`.
    /// @param node See `computeStep`.
    /// @param step See `computeStep`.
    /// @param sources See `computeStep`.
    /// @param token See `computeStep`.
    /// @param claimedValue The claimed float32 bits (bit-exact comparison).
    /// @param claimedIndex The claimed index (0 for steps without an index).
    /// @return correct True iff both equal the recomputed result.
    function verifyStep(
        Context calldata ctx,
        NodeProof calldata node,
        Step calldata step,
        SourceProof[] calldata sources,
        SourceProof calldata token,
        uint32 claimedValue,
        uint32 claimedIndex
    ) external view returns (bool correct) {
        (uint32 value, uint32 index) = _compute(ctx, node, step, sources, token);
        return value == claimedValue && index == claimedIndex;
    }

    /// @notice The Gumbel noise g(seed, t, k) = -log(-log(u)) of spec section 6 (float32 bits).
    /// @param seed The request's seed.
    /// @param position The position t whose logits are sampled.
    /// @param k The vocabulary index.
    /// @return The noise's bits.
    function gumbel(uint256 seed, uint256 position, uint256 k) external pure returns (uint32) {
        return _gumbel(seed, position, k);
    }

    // --- the step ----------------------------------------------------------------------------

    function _compute(
        Context calldata ctx,
        NodeProof calldata np,
        Step calldata step,
        SourceProof[] calldata sources,
        SourceProof calldata token
    ) private view returns (uint32, uint32) {
        MerkleProofs.verifyNode(
            ctx.programRoot, ctx.nodesPerPosition, np.id, np.descriptor, np.siblings
        );
        Frame memory f;
        f.node = abi.decode(np.descriptor, (Node));
        f.t = ctx.position;
        f.id = np.id;
        if (f.t >= (1 << 64) || f.t * ctx.nodesPerPosition + np.id >= ctx.recordCount) {
            revert RecordOutOfRange(f.t, np.id, ctx.recordCount);
        }
        _checkNode(f.node);
        uint8 op = f.node.op;
        uint256 size = _resolveShape(f);
        if (step.element >= size) revert ElementOutOfRange(step.element, size);
        f.coords = _coords(f, step.element);

        if (op == OP_MAP || op == OP_CACHE_APPEND) {
            if (step.kind != KIND_ELEMENT) revert WrongStepKind(step.kind, op);
            if (op == OP_CACHE_APPEND && f.coords[0] < f.t) {
                return (_previousRow(ctx, np.id, f.t, step.element, sources), 0);
            }
            return (_term(ctx, f, np.id, sources, token, type(uint256).max), 0);
        }
        // REDUCE or SAMPLE: a tree over the padded leaves
        f.reduceLen = _resolveDim(f.node.reduceLen, f.t);
        f.width = f.reduceLen <= 1 ? 1 : 1 << MerkleProofs.depthFor(f.reduceLen);
        if (f.width > (1 << 32)) revert ReductionTooWide(f.width);
        uint8 reducer = op == OP_SAMPLE ? RED_ARGMAX : f.node.reducer;
        if (step.kind == KIND_LEAF) return _leaf(ctx, f, np.id, step.leaf, reducer, sources, token);
        if (step.kind == KIND_TREE) {
            if (sources.length != 0) revert WrongSourceCount(sources.length, 0);
            return _treeNode(f.width, step, reducer);
        }
        revert WrongStepKind(step.kind, op);
    }

    function _leaf(
        Context calldata ctx,
        Frame memory f,
        uint256 nodeId,
        uint256 k,
        uint8 reducer,
        SourceProof[] calldata sources,
        SourceProof calldata token
    ) private view returns (uint32 value, uint32 index) {
        if (k >= f.width) revert LeafOutOfRange(k, f.width);
        if (reducer == RED_ARGMAX) index = uint32(k);
        if (k >= f.reduceLen) {
            if (sources.length != 0) revert WrongSourceCount(sources.length, 0);
            return (reducer == RED_SUM ? SoftFloat32.POS_ZERO : SoftFloat32.NEG_INF, index);
        }
        value = _term(ctx, f, nodeId, sources, token, k);
        if (f.node.op == OP_SAMPLE) value = _score(ctx, f.t, k, value);
    }

    function _treeNode(uint256 width, Step calldata step, uint8 reducer)
        private
        pure
        returns (uint32, uint32)
    {
        uint256 depth = MerkleProofs.depthFor(width);
        if (step.level == 0 || step.level > depth || step.index >= width >> step.level) {
            revert TreeNodeOutOfRange(step.level, step.index);
        }
        uint32 l = step.leftValue;
        uint32 r = step.rightValue;
        SoftFloat32.requireCanonical(l);
        SoftFloat32.requireCanonical(r);
        if (reducer == RED_SUM) return (SoftFloat32.add(l, r), 0);
        if (reducer == RED_MAX) return (SoftFloat32.max(l, r), 0);
        // argmax_step: the right pair wins only if strictly greater, or NaN against a non-NaN
        bool lnan = SoftFloat32.isNaN(l);
        bool rnan = SoftFloat32.isNaN(r);
        if (SoftFloat32.lt(l, r) || (rnan && !lnan)) return (r, step.rightIndex);
        return (l, step.leftIndex);
    }

    /// @dev fn(operands) at the element's coordinates (plus reduction index k, unless k is
    ///      type(uint256).max). For a cache, the row coordinate is dropped.
    function _term(
        Context calldata ctx,
        Frame memory f,
        uint256 nodeId,
        SourceProof[] calldata sources,
        SourceProof calldata token,
        uint256 k
    ) private view returns (uint32) {
        Operand[] memory ops = f.node.operands;
        if (sources.length != ops.length) revert WrongSourceCount(sources.length, ops.length);
        uint32 a = _operand(ctx, f, nodeId, ops[0], sources[0], token, k);
        uint32 b;
        if (ops.length == 2) b = _operand(ctx, f, nodeId, ops[1], sources[1], token, k);
        return _apply(f.node.fn, a, b);
    }

    function _operand(
        Context calldata ctx,
        Frame memory f,
        uint256 nodeId,
        Operand memory op,
        SourceProof calldata p,
        SourceProof calldata token,
        uint256 k
    ) private view returns (uint32 bits) {
        if (op.src == SRC_CONST) {
            if (op.index >> 32 != 0) revert BadConstant(op.index);
            bits = uint32(op.index);
            SoftFloat32.requireCanonical(bits);
            return bits;
        }
        uint256 flat = _flatIndex(ctx, f, op, token, k);
        uint256 id = op.index & ((1 << SELECT_SHIFT) - 1);
        if (op.src == SRC_NODE) {
            if (id >= nodeId) revert SourceNotEarlier(id, nodeId);
            MerkleProofs.verifyRecord(
                ctx.traceRoot, ctx.recordCount, ctx.nodesPerPosition, f.t, id, p.root,
                p.rootSiblings
            );
        } else {
            MerkleProofs.verifyWeight(
                ctx.weightsRoot, ctx.weightCount, id, p.name, p.shape, p.root, p.rootSiblings
            );
            uint256 expected = 1;
            for (uint256 i; i < p.shape.length; ++i) {
                expected *= p.shape[i];
            }
            if (p.length != expected) revert WeightLengthMismatch(p.length, expected);
        }
        bits = MerkleProofs.verifyElement(
            p.root, MerkleProofs.DTYPE_F32, p.length, flat, p.chunk, p.siblings
        );
        SoftFloat32.requireCanonical(bits);
    }

    /// @dev offset + t_stride * t + token_stride * token + sum(strides[d] * index[d]), where
    ///      `token` is the input token, or the value of the operand's selector.
    function _flatIndex(
        Context calldata ctx,
        Frame memory f,
        Operand memory op,
        SourceProof calldata token,
        uint256 k
    ) private view returns (uint256) {
        bool reduces = k != type(uint256).max;
        bool cache = f.node.op == OP_CACHE_APPEND;
        uint256 first = cache ? 1 : 0; // a cache's operand reads over its row dimensions
        uint256 dims = f.coords.length - first + (reduces ? 1 : 0);
        if (op.strides.length != dims) revert WrongStrideCount(op.strides.length, dims);
        int256 acc = int256(op.offset) + int256(op.tStride) * int256(f.t);
        if (op.tokenStride != 0) {
            uint256 select = op.index >> SELECT_SHIFT;
            uint256 v;
            if (select != 0) {
                v = _selected(ctx, f, select - 1, token);
            } else {
                if (!f.haveToken) {
                    f.token = _inputToken(ctx, f.t, token);
                    f.haveToken = true;
                }
                v = f.token;
            }
            acc += int256(op.tokenStride) * int256(v);
        }
        uint256 n = f.coords.length;
        for (uint256 d = first; d < n; ++d) {
            acc += int256(op.strides[d - first]) * int256(f.coords[d]);
        }
        if (reduces) acc += int256(op.strides[dims - 1]) * int256(k);
        if (acc < 0) revert NegativeIndex(acc);
        return uint256(acc);
    }

    /// @dev The input token at t: prompt token t, or the output of record (t - 1, tokenNode).
    function _inputToken(Context calldata ctx, uint256 t, SourceProof calldata p)
        private
        view
        returns (uint256)
    {
        if (t < ctx.promptLength) {
            return MerkleProofs.verifyElement(
                ctx.promptRoot, MerkleProofs.DTYPE_U32, ctx.promptLength, t, p.chunk, p.siblings
            );
        }
        if (t == 0) revert NoInputToken(t);
        MerkleProofs.verifyRecord(
            ctx.traceRoot,
            ctx.recordCount,
            ctx.nodesPerPosition,
            t - 1,
            ctx.tokenNode,
            p.root,
            p.rootSiblings
        );
        return MerkleProofs.verifyElement(p.root, MerkleProofs.DTYPE_U32, 1, 0, p.chunk, p.siblings);
    }

    /// @dev A selector's value: the one uint32 element of record (t, select), an earlier node
    ///      (a data-dependent read: an expert index chosen by a router's ARGMAX).
    function _selected(
        Context calldata ctx,
        Frame memory f,
        uint256 select,
        SourceProof calldata p
    ) private view returns (uint256) {
        if (select >= f.id) revert SourceNotEarlier(select, f.id);
        MerkleProofs.verifyRecord(
            ctx.traceRoot, ctx.recordCount, ctx.nodesPerPosition, f.t, select, p.root,
            p.rootSiblings
        );
        return MerkleProofs.verifyElement(p.root, MerkleProofs.DTYPE_U32, 1, 0, p.chunk, p.siblings);
    }

    /// @dev A cache row < t: element e of this node's output at t - 1.
    function _previousRow(
        Context calldata ctx,
        uint256 nodeId,
        uint256 t,
        uint256 element,
        SourceProof[] calldata sources
    ) private view returns (uint32 bits) {
        if (sources.length != 1) revert WrongSourceCount(sources.length, 1);
        SourceProof calldata p = sources[0];
        MerkleProofs.verifyRecord(
            ctx.traceRoot, ctx.recordCount, ctx.nodesPerPosition, t - 1, nodeId, p.root,
            p.rootSiblings
        );
        bits = MerkleProofs.verifyElement(
            p.root, MerkleProofs.DTYPE_F32, p.length, element, p.chunk, p.siblings
        );
        SoftFloat32.requireCanonical(bits);
    }

    /// @dev A SAMPLE leaf's score: the logit at temperature 0, else logit / T + g(seed, t, k).
    function _score(Context calldata ctx, uint256 t, uint256 k, uint32 logit)
        private
        pure
        returns (uint32)
    {
        uint32 temp = ctx.temperature;
        // finite and >= 0: +0, -0, or a positive finite pattern
        if (temp != SoftFloat32.NEG_ZERO && (temp >= 0x7F800000)) revert BadTemperature(temp);
        if (temp & 0x7FFFFFFF == 0) return logit;
        return SoftFloat32.add(SoftFloat32.div(logit, temp), _gumbel(ctx.seed, t, k));
    }

    /// @dev g = neg(log(neg(log(u)))), u = (2m + 1) 2^-24, m = keccak256(abi.encode(s, t, k)) >> 233.
    function _gumbel(uint256 seed, uint256 t, uint256 k) private pure returns (uint32) {
        uint256 m = uint256(keccak256(abi.encode(seed, t, k))) >> 233;
        uint256 v = 2 * m + 1; // odd, < 2^24: u = v * 2^-24 is exact
        uint256 len = MerkleProofs.depthFor(v + 1); // bit length of v (v odd, so v + 1 > 2^(len-1))
        uint32 u = uint32(((len + 102) << 23) | ((v << (24 - len)) & 0x7FFFFF));
        return SoftFloat32.neg(SoftFloat32.log(SoftFloat32.neg(SoftFloat32.log(u))));
    }

    // --- the node ----------------------------------------------------------------------------

    function _checkNode(Node memory node) private pure {
        uint8 op = node.op;
        if (op > OP_SAMPLE) revert UnknownOp(op);
        if (node.fn > FN_LAST) revert UnknownFn(node.fn);
        if (node.reducer > RED_ARGMAX || (op == OP_REDUCE && node.reducer == RED_NONE)) {
            revert UnknownReducer(node.reducer);
        }
        uint256 want = (op == OP_CACHE_APPEND || op == OP_SAMPLE) ? 1 : _arity(node.fn);
        if (node.operands.length != want) revert WrongOperandCount(node.operands.length, want);
        for (uint256 i; i < want; ++i) {
            if (node.operands[i].src > SRC_CONST) revert UnknownSource(node.operands[i].src);
        }
        if (op == OP_CACHE_APPEND && (node.shape.length == 0 || node.shape[0] != -1)) {
            revert BadShape(node.shape.length == 0 ? int256(0) : int256(node.shape[0]));
        }
    }

    /// @dev Size of a dimension at position t: T (-1) is t + 1.
    function _resolveDim(int64 d, uint256 t) private pure returns (uint256) {
        if (d == -1) return t + 1;
        if (d < 0) revert BadShape(d);
        return uint256(uint64(d));
    }

    /// @dev Output size of the node at f.t (every dimension resolved).
    function _resolveShape(Frame memory f) private pure returns (uint256 size) {
        size = 1;
        int64[] memory shape = f.node.shape;
        for (uint256 i; i < shape.length; ++i) {
            uint256 n = _resolveDim(shape[i], f.t);
            if (n >= MAX_DIM) revert BadShape(shape[i]);
            size *= n;
            if (size >= MAX_DIM) revert BadShape(shape[i]);
        }
    }

    /// @dev Row-major coordinates of a flat element over the resolved shape.
    function _coords(Frame memory f, uint256 element) private pure returns (uint256[] memory c) {
        int64[] memory shape = f.node.shape;
        c = new uint256[](shape.length);
        for (uint256 i = shape.length; i > 0; --i) {
            uint256 n = _resolveDim(shape[i - 1], f.t);
            c[i - 1] = element % n;
            element /= n;
        }
    }

    function _arity(uint8 fn) private pure returns (uint256) {
        return (fn >= 1 && fn <= 6) ? 2 : 1; // ADD SUB MUL DIV MAX MIN
    }

    function _apply(uint8 fn, uint32 a, uint32 b) private pure returns (uint32) {
        if (fn == 0) return a;
        if (fn == 1) return SoftFloat32.add(a, b);
        if (fn == 2) return SoftFloat32.sub(a, b);
        if (fn == 3) return SoftFloat32.mul(a, b);
        if (fn == 4) return SoftFloat32.div(a, b);
        if (fn == 5) return SoftFloat32.max(a, b);
        if (fn == 6) return SoftFloat32.min(a, b);
        if (fn == 7) return SoftFloat32.neg(a);
        if (fn == 8) return SoftFloat32.abs(a);
        if (fn == 9) return SoftFloat32.sqrt(a);
        if (fn == 10) return SoftFloat32.exp(a);
        if (fn == 11) return SoftFloat32.log(a);
        if (fn == 12) return SoftFloat32.sigmoid(a);
        if (fn == 13) return SoftFloat32.silu(a);
        if (fn == 14) return SoftFloat32.tanh(a);
        if (fn == 15) return SoftFloat32.geluTanh(a);
        if (fn == 16) return SoftFloat32.reciprocal(a);
        return SoftFloat32.rsqrt(a);
    }
}
