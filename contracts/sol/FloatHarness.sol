// SPDX-License-Identifier: UNLICENSED
pragma solidity 0.8.37;

import {SoftFloat32} from "./SoftFloat32.sol";

/// @title FloatHarness: external entry points to SoftFloat32 for differential tests.
/// @notice Every function is pure (or view, for gas measurement) and works on binary32 bit
///         patterns. NaN inputs of any payload are accepted, as in the reference; results carry
///         the canonical NaN. The *Batch functions apply one function elementwise so that a test
///         can check thousands of cases in one eth_call.
/// @dev Not part of the dispute protocol: a test and benchmark fixture only.
contract FloatHarness {
    /// @notice Two operand arrays of a batch differ in length.
    /// @param lengthA Length of the first array.
    /// @param lengthB Length of the second array.
    error LengthMismatch(uint256 lengthA, uint256 lengthB);

    /// @notice `gasOf` was given an operation code it does not know.
    /// @param op The operation code.
    error UnknownOp(uint8 op);

    // --- single operations --------------------------------------------------------------

    /// @notice a + b (binary32, round to nearest even).
    function add(uint32 a, uint32 b) external pure returns (uint32) {
        return SoftFloat32.add(a, b);
    }

    /// @notice a - b.
    function sub(uint32 a, uint32 b) external pure returns (uint32) {
        return SoftFloat32.sub(a, b);
    }

    /// @notice a * b.
    function mul(uint32 a, uint32 b) external pure returns (uint32) {
        return SoftFloat32.mul(a, b);
    }

    /// @notice a / b.
    function div(uint32 a, uint32 b) external pure returns (uint32) {
        return SoftFloat32.div(a, b);
    }

    /// @notice maximum(a, b) of the reference.
    function max(uint32 a, uint32 b) external pure returns (uint32) {
        return SoftFloat32.max(a, b);
    }

    /// @notice minimum(a, b) of the reference.
    function min(uint32 a, uint32 b) external pure returns (uint32) {
        return SoftFloat32.min(a, b);
    }

    /// @notice IEEE a == b.
    function eq(uint32 a, uint32 b) external pure returns (bool) {
        return SoftFloat32.eq(a, b);
    }

    /// @notice IEEE a < b.
    function lt(uint32 a, uint32 b) external pure returns (bool) {
        return SoftFloat32.lt(a, b);
    }

    /// @notice IEEE a <= b.
    function le(uint32 a, uint32 b) external pure returns (bool) {
        return SoftFloat32.le(a, b);
    }

    /// @notice Correctly rounded square root.
    function sqrt(uint32 x) external pure returns (uint32) {
        return SoftFloat32.sqrt(x);
    }

    /// @notice -x.
    function neg(uint32 x) external pure returns (uint32) {
        return SoftFloat32.neg(x);
    }

    /// @notice |x|.
    function abs(uint32 x) external pure returns (uint32) {
        return SoftFloat32.abs(x);
    }

    /// @notice e^x by the reference's fixed sequence.
    function exp(uint32 x) external pure returns (uint32) {
        return SoftFloat32.exp(x);
    }

    /// @notice Natural log by the reference's fixed sequence.
    function log(uint32 x) external pure returns (uint32) {
        return SoftFloat32.log(x);
    }

    /// @notice Logistic sigmoid.
    function sigmoid(uint32 x) external pure returns (uint32) {
        return SoftFloat32.sigmoid(x);
    }

    /// @notice x * sigmoid(x).
    function silu(uint32 x) external pure returns (uint32) {
        return SoftFloat32.silu(x);
    }

    /// @notice Hyperbolic tangent.
    function tanh(uint32 x) external pure returns (uint32) {
        return SoftFloat32.tanh(x);
    }

    /// @notice GELU, tanh form.
    function geluTanh(uint32 x) external pure returns (uint32) {
        return SoftFloat32.geluTanh(x);
    }

    /// @notice 1 / x.
    function reciprocal(uint32 x) external pure returns (uint32) {
        return SoftFloat32.reciprocal(x);
    }

    /// @notice 1 / sqrt(x).
    function rsqrt(uint32 x) external pure returns (uint32) {
        return SoftFloat32.rsqrt(x);
    }

    /// @notice bfloat16 -> binary32.
    function fromBf16(uint16 h) external pure returns (uint32) {
        return SoftFloat32.fromBf16(h);
    }

    /// @notice binary16 -> binary32.
    function fromFp16(uint16 h) external pure returns (uint32) {
        return SoftFloat32.fromFp16(h);
    }

    /// @notice binary32 -> bfloat16, round to nearest even.
    function toBf16(uint32 x) external pure returns (uint16) {
        return SoftFloat32.toBf16(x);
    }

    /// @notice Reverts with `SoftFloat32.NonCanonicalNaN` unless x is not a NaN or is 0x7FC00000.
    function requireCanonical(uint32 x) external pure {
        SoftFloat32.requireCanonical(x);
    }

    // --- batches ------------------------------------------------------------------------

    function _binary(
        uint32[] calldata a,
        uint32[] calldata b,
        function(uint32, uint32) internal pure returns (uint32) f
    ) private pure returns (uint32[] memory out) {
        if (a.length != b.length) revert LengthMismatch(a.length, b.length);
        out = new uint32[](a.length);
        for (uint256 i; i < a.length; ++i) {
            out[i] = f(a[i], b[i]);
        }
    }

    function _unary(uint32[] calldata x, function(uint32) internal pure returns (uint32) f)
        private
        pure
        returns (uint32[] memory out)
    {
        out = new uint32[](x.length);
        for (uint256 i; i < x.length; ++i) {
            out[i] = f(x[i]);
        }
    }

    /// @notice Elementwise a + b.
    function addBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint32[] memory)
    {
        return _binary(a, b, SoftFloat32.add);
    }

    /// @notice Elementwise a - b.
    function subBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint32[] memory)
    {
        return _binary(a, b, SoftFloat32.sub);
    }

    /// @notice Elementwise a * b.
    function mulBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint32[] memory)
    {
        return _binary(a, b, SoftFloat32.mul);
    }

    /// @notice Elementwise a / b.
    function divBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint32[] memory)
    {
        return _binary(a, b, SoftFloat32.div);
    }

    /// @notice Elementwise maximum(a, b).
    function maxBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint32[] memory)
    {
        return _binary(a, b, SoftFloat32.max);
    }

    /// @notice Elementwise minimum(a, b).
    function minBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint32[] memory)
    {
        return _binary(a, b, SoftFloat32.min);
    }

    /// @notice Elementwise comparisons, packed per element: bit 0 = eq, bit 1 = lt, bit 2 = le.
    function cmpBatch(uint32[] calldata a, uint32[] calldata b)
        external
        pure
        returns (uint8[] memory out)
    {
        if (a.length != b.length) revert LengthMismatch(a.length, b.length);
        out = new uint8[](a.length);
        for (uint256 i; i < a.length; ++i) {
            uint32 x = a[i];
            uint32 y = b[i];
            uint8 bits = SoftFloat32.eq(x, y) ? 1 : 0;
            if (SoftFloat32.lt(x, y)) bits |= 2;
            if (SoftFloat32.le(x, y)) bits |= 4;
            out[i] = bits;
        }
    }

    /// @notice Elementwise sqrt.
    function sqrtBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.sqrt);
    }

    /// @notice Elementwise neg.
    function negBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.neg);
    }

    /// @notice Elementwise abs.
    function absBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.abs);
    }

    /// @notice Elementwise exp.
    function expBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.exp);
    }

    /// @notice Elementwise log.
    function logBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.log);
    }

    /// @notice Elementwise sigmoid.
    function sigmoidBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.sigmoid);
    }

    /// @notice Elementwise silu.
    function siluBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.silu);
    }

    /// @notice Elementwise tanh.
    function tanhBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.tanh);
    }

    /// @notice Elementwise geluTanh.
    function geluTanhBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.geluTanh);
    }

    /// @notice Elementwise reciprocal.
    function reciprocalBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.reciprocal);
    }

    /// @notice Elementwise rsqrt.
    function rsqrtBatch(uint32[] calldata x) external pure returns (uint32[] memory) {
        return _unary(x, SoftFloat32.rsqrt);
    }

    /// @notice Elementwise toBf16, widened to uint32 for a uniform interface.
    function toBf16Batch(uint32[] calldata x) external pure returns (uint32[] memory out) {
        out = new uint32[](x.length);
        for (uint256 i; i < x.length; ++i) {
            out[i] = SoftFloat32.toBf16(x[i]);
        }
    }

    /// @notice Elementwise fromBf16 (inputs must be < 2^16; the ABI decoder enforces it).
    function fromBf16Batch(uint16[] calldata h) external pure returns (uint32[] memory out) {
        out = new uint32[](h.length);
        for (uint256 i; i < h.length; ++i) {
            out[i] = SoftFloat32.fromBf16(h[i]);
        }
    }

    /// @notice Elementwise fromFp16.
    function fromFp16Batch(uint16[] calldata h) external pure returns (uint32[] memory out) {
        out = new uint32[](h.length);
        for (uint256 i; i < h.length; ++i) {
            out[i] = SoftFloat32.fromFp16(h[i]);
        }
    }

    // --- gas measurement ----------------------------------------------------------------

    /// @notice Gas of one library call per element, measured with gasleft() around it.
    /// @dev Operation codes: 0 = no call (the measurement's own cost, to subtract), 1 add,
    ///      2 sub, 3 mul, 4 div, 5 max, 6 min, 7 sqrt, 8 exp, 9 log, 10 sigmoid, 11 silu,
    ///      12 tanh, 13 geluTanh, 14 reciprocal, 15 rsqrt. Unary operations ignore `b`. The
    ///      function is chosen before the measurement, so the figure is the internal call
    ///      (jump in, body, jump out) plus the two GAS opcodes of the measurement.
    /// @param op Operation code.
    /// @param a First operands.
    /// @param b Second operands (same length as `a`).
    /// @return gasUsed Gas spent per element.
    /// @return results The results, returned so that the calls cannot be optimised away.
    function gasOf(uint8 op, uint32[] calldata a, uint32[] calldata b)
        external
        view
        returns (uint256[] memory gasUsed, uint32[] memory results)
    {
        if (a.length != b.length) revert LengthMismatch(a.length, b.length);
        if (op > 15) revert UnknownOp(op);
        gasUsed = new uint256[](a.length);
        results = new uint32[](a.length);
        if (op == 0) {
            for (uint256 i; i < a.length; ++i) {
                uint32 x = a[i];
                uint256 g0 = gasleft();
                uint32 r = x;
                uint256 g1 = gasleft();
                gasUsed[i] = g0 - g1;
                results[i] = r;
            }
        } else if (op <= 6) {
            function(uint32, uint32) internal pure returns (uint32) f = _binaryOp(op);
            for (uint256 i; i < a.length; ++i) {
                uint32 x = a[i];
                uint32 y = b[i];
                uint256 g0 = gasleft();
                uint32 r = f(x, y);
                uint256 g1 = gasleft();
                gasUsed[i] = g0 - g1;
                results[i] = r;
            }
        } else {
            function(uint32) internal pure returns (uint32) f = _unaryOp(op);
            for (uint256 i; i < a.length; ++i) {
                uint32 x = a[i];
                uint256 g0 = gasleft();
                uint32 r = f(x);
                uint256 g1 = gasleft();
                gasUsed[i] = g0 - g1;
                results[i] = r;
            }
        }
    }

    function _binaryOp(uint8 op)
        private
        pure
        returns (function(uint32, uint32) internal pure returns (uint32))
    {
        if (op == 1) return SoftFloat32.add;
        if (op == 2) return SoftFloat32.sub;
        if (op == 3) return SoftFloat32.mul;
        if (op == 4) return SoftFloat32.div;
        if (op == 5) return SoftFloat32.max;
        return SoftFloat32.min;
    }

    function _unaryOp(uint8 op) private pure returns (function(uint32) internal pure returns (uint32)) {
        if (op == 7) return SoftFloat32.sqrt;
        if (op == 8) return SoftFloat32.exp;
        if (op == 9) return SoftFloat32.log;
        if (op == 10) return SoftFloat32.sigmoid;
        if (op == 11) return SoftFloat32.silu;
        if (op == 12) return SoftFloat32.tanh;
        if (op == 13) return SoftFloat32.geluTanh;
        if (op == 14) return SoftFloat32.reciprocal;
        return SoftFloat32.rsqrt;
    }
}
