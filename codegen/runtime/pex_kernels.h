/*
 * pex_kernels.h - pexopt's portable int8 kernels (C99, no malloc, no globals).
 *
 * Part of the pexopt runtime; copied next to the generated model by `emit_c`.
 * Semantics are TFLite / CMSIS-NN int8 (double-rounding requantisation) and equal
 * pexopt's numpy simulator (pexopt/simulate/kernels.py) bit for bit, except the
 * float-math kernels documented below.
 *
 * Layout conventions
 * - Activations are NHWC int8. A kernel that works on a channel range gets a
 *   pointer to the first channel it reads or writes and a *pixel stride*: the
 *   number of elements between consecutive pixels. A contiguous H x W x s slice
 *   buffer has pixel stride s; channels [c0, c0 + s) of a full H x W x C tensor
 *   are `base + c0` with pixel stride C.
 * - Generic kernels (element-wise, mean, copies) take a pex_view: 4 dimensions
 *   and 4 element strides, outermost first. A stride of 0 broadcasts.
 * - int32 accumulators are accessed through memcpy (no alignment or aliasing
 *   assumptions beyond the 4-byte alignment of the arena plan).
 */
#ifndef PEX_KERNELS_H
#define PEX_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A 4-D strided view: dims and element strides, outermost first. */
typedef struct {
    int32_t d[4];
    int32_t s[4];
} pex_view;

/* Convolution, depthwise and grouped convolution. */
typedef struct {
    int32_t batches;
    int32_t in_h, in_w, in_c;    /* whole input; in_c = all input channels */
    int32_t out_h, out_w, out_c; /* whole output */
    int32_t kh, kw, sh, sw, dh, dw;
    int32_t pad_t, pad_l;        /* bottom/right padding is implied by out_h/out_w */
    int32_t groups;              /* conv: input channel groups (1 = dense) */
    int32_t ch_mult;             /* depthwise: output channels per input channel */
    int32_t in_offset;           /* -(input zero point) */
    int32_t out_offset;          /* output zero point */
    int32_t act_min, act_max;
    const int8_t *weights;       /* conv: OHWI (C_out, KH, KW, C_in / groups); dw: see pex_dw_conv_s8 */
    const int32_t *bias;         /* [C_out] */
    const int32_t *mult;         /* [C_out] TFLite QuantizeMultiplier mantissas */
    const int32_t *shift;        /* [C_out] positive = left shift */
} pex_conv_t;

/* Fully connected: out[r][o] = sum_k w[o][k] * (x[r][k] + in_offset) + bias[o]. */
typedef struct {
    int32_t rows, k, out_c;
    int32_t in_last;             /* channels of the input tensor's last axis (k % in_last == 0) */
    int32_t in_offset, out_offset, act_min, act_max;
    const int8_t *weights;       /* (C_out, K), K in the memory order of the input */
    const int32_t *bias, *mult, *shift;
} pex_fc_t;

/* Max / average pooling. */
typedef struct {
    int32_t batches, in_h, in_w, out_h, out_w;
    int32_t kh, kw, sh, sw, pad_t, pad_l, pad_b, pad_r;
    int32_t count_include_pad;   /* avg: count the declared padding */
    int32_t same_q;              /* input and output quantisation equal: no rescale */
    int32_t in_zp, out_zp, mult, shift, act_min, act_max;
} pex_pool_t;

/* Requantisation of one value (TFLite MultiplyByQuantizedMultiplier, double rounding). */
int32_t pex_mbqm(int32_t x, int32_t multiplier, int32_t shift);

/* Dense/grouped convolution: output channels [oc0, oc1) of the whole output.
 * in: whole input (pixel stride in_pix); out: channel oc0 of the destination
 * (pixel stride out_pix). */
void pex_conv_s8(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                 int32_t out_pix, int32_t oc0, int32_t oc1);

/* Partial sums of input channels [ic0, ic1) of a dense conv (groups == 1) added to the
 * int32 accumulator acc (out_h x out_w x out_c, contiguous); first != 0 starts from the
 * bias. in points at input channel ic0 (pixel stride in_pix). */
void pex_conv_acc_s8(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int32_t ic0,
                     int32_t ic1, void *acc, int first);

/* Depthwise conv, output channels [c0, c1) (c0 % ch_mult == 0). in points at input channel
 * c0 / ch_mult, out at output channel c0. w points at the weight of output channel c0 at
 * tap (0, 0); the weight of output channel c0 + j at tap t is w[t * w_tap + j]. */
void pex_dw_conv_s8(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                    int32_t out_pix, int32_t c0, int32_t c1, const int8_t *w, int32_t w_tap);

/* In-place depthwise conv (ch_mult 1, output shape == input shape): channel by channel,
 * each computed into scratch (out_h x out_w bytes) and copied over the input channel.
 * Weights (KH, KW, C) with tap stride C. */
void pex_dw_conv_inplace_s8(const pex_conv_t *p, int8_t *buf, int8_t *scratch);

/* Fully connected, output channels [oc0, oc1); in: rows x k contiguous; out: channel oc0
 * of row 0, row stride out_row. */
void pex_fc_s8(const pex_fc_t *p, const int8_t *in, int8_t *out, int32_t out_row,
               int32_t oc0, int32_t oc1);

/* Partial sums of the input's last-axis channels [ic0, ic1) added to acc (rows x out_c).
 * in points at channel ic0 of the first pixel; pixels (k / in_last per row) are in_pix
 * apart. first != 0 starts from the bias. */
void pex_fc_acc_s8(const pex_fc_t *p, const int8_t *in, int32_t in_pix, int32_t ic0,
                   int32_t ic1, void *acc, int first);

/* int32 accumulator (pixels x channels) -> int8 in place (byte i written after int32 i
 * was read). mult/shift per channel. */
void pex_requantize_s8(void *acc, int32_t pixels, int32_t channels, const int32_t *mult,
                       const int32_t *shift, int32_t out_offset, int32_t act_min,
                       int32_t act_max);

/* Pools over `channels` channels (pixel strides in_pix / out_pix). */
void pex_maxpool_s8(const pex_pool_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                    int32_t out_pix, int32_t channels);
void pex_avgpool_s8(const pex_pool_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                    int32_t out_pix, int32_t channels);

/* Mean over the axes set in axes_mask (bit k = axis k of the 4-D input view); the output
 * view has size 1 on those axes. TFLite integer Mean: sum(x - in_zp), rescale, rounded
 * division by the count, + out_zp. */
void pex_mean_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                 int32_t axes_mask, int32_t in_zp, int32_t out_zp, int32_t mult,
                 int32_t shift, int32_t act_min, int32_t act_max);

/* Element-wise kernels over the 4-D output view dims (operand strides may be 0). */
typedef struct {
    int32_t in1_offset, in1_mult, in1_shift; /* offsets are -(zero point) */
    int32_t in2_offset, in2_mult, in2_shift;
    int32_t left_shift;
    int32_t out_offset, out_mult, out_shift, act_min, act_max;
} pex_ew_t;

void pex_add_s8(const pex_ew_t *p, const int8_t *a, const pex_view *av, const int8_t *b,
                const pex_view *bv, int8_t *y, const pex_view *yv);
void pex_mul_s8(const pex_ew_t *p, const int8_t *a, const pex_view *av, const int8_t *b,
                const pex_view *bv, int8_t *y, const pex_view *yv);

/* y = lut[x + 128] (table-based unary ops: Relu/Clip, Sigmoid, HardSigmoid, HardSwish,
 * scalar affine, requantising copies), or a plain strided copy when lut is NULL
 * (transpose, concatenation). Dims are yv's. */
void pex_copy_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                 const int8_t *lut);

/* x * a + b in float64 (dequantise, affine, requantise with halves away from zero).
 * a and b are broadcast through their own stride views (element strides into a / b). */
void pex_affine_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                   const double *a, const pex_view *av, const double *b, const pex_view *bv,
                   double in_scale, int32_t in_zp, double out_scale, int32_t out_zp,
                   int32_t act_min, int32_t act_max);

/* Pad (mode 0 constant, 1 reflect, 2 edge) of x (view xv) into y (view yv, dims = padded);
 * before[k] = padding before axis k. lut (or NULL) rescales the copied values. */
void pex_pad_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                const int32_t before[4], int32_t mode, int32_t value, const int8_t *lut);

/* Nearest resize: y[i] = x[map0[i0], map1[i1], map2[i2], map3[i3]]; a NULL map is the
 * identity. */
void pex_resize_nearest_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                           const int32_t *const maps[4], const int8_t *lut);

/* Softmax over n elements (stride inner) of each of outer x inner groups of a contiguous
 * buffer, in float64: dequantise, subtract the max, exp / log-sum-exp, requantise. The
 * sum is numpy's pairwise summation when inner == 1, else sequential. */
void pex_softmax_s8(const int8_t *x, int8_t *y, int32_t outer, int32_t n, int32_t inner,
                    double in_scale, int32_t in_zp, double out_scale, int32_t out_zp,
                    int32_t act_min, int32_t act_max, int32_t log_softmax);

#ifdef __cplusplus
}
#endif

#endif /* PEX_KERNELS_H */
