"""TFLite / CMSIS-NN fixed-point requantisation, vectorised with numpy int64.

Default (double-rounding) arithmetic of TFLite's `MultiplyByQuantizedMultiplier` and CMSIS-NN's
`arm_nn_requantize`: gemmlowp `SaturatingRoundingDoublingHighMul` followed by
`RoundingDivideByPOT`. A positive shift is a left shift. Accumulators are int32 in C: inputs are
taken modulo 2^32 and the left shift wraps like the C code on Arm (``x * (1 << left)``).
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite `QuantizeMultiplier`: real ~= m * 2^(shift - 31), m in [2^30, 2^31) (0 for 0).

    frexp-based; a mantissa that rounds up to 2^31 is halved with the exponent incremented, and
    multipliers below ~2^-31 flush to (0, 0) as TFLite does.
    """
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = _round_half_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def _round_half_away(x: float) -> int:
    """C `std::round` (TfLiteRound): halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Vectorised `std::round` on floats: halves away from zero (TFLite's TfLiteRound)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to the int32 range (kept as int64)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (int64 arrays in and out)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    overflow = (a == b) & (a == INT32_MIN)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    x = ab + nudge
    high = np.where(x >= 0, x >> 31, -((-x) >> 31))  # C division truncates toward zero
    return np.where(overflow, INT32_MAX, high).astype(np.int64)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2^exponent, ties away from zero (exponent 0..31)."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(acc: np.ndarray, multiplier: np.ndarray | int,
                                     shift: np.ndarray | int) -> np.ndarray:
    """TFLite `MultiplyByQuantizedMultiplier(int32 x, m, shift)` elementwise (broadcasting).

    left shift = max(shift, 0) (wrapping in int32), right shift = max(-shift, 0). Returns int64.
    """
    x = wrap_int32(acc)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    x = wrap_int32(x << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, m), right)


def quantize_real(x: np.ndarray, scale: float, zero_point: int, lo: int = -128,
                  hi: int = 127) -> np.ndarray:
    """real -> int8 with TFLite rounding (halves away from zero), saturating to [lo, hi]."""
    q = round_half_away(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, lo, hi).astype(np.int8)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 -> real (float64)."""
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale


def activation_range_int8(lo: float | None, hi: float | None, scale: float,
                          zero_point: int) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized: [-128, 127] ∩ quantised real bounds."""
    qmin, qmax = -128, 127
    if lo is not None and math.isfinite(lo):
        qmin = max(qmin, zero_point + _round_half_away(lo / scale))
    if hi is not None and math.isfinite(hi):
        qmax = min(qmax, zero_point + _round_half_away(hi / scale))
    return qmin, max(qmin, qmax)
