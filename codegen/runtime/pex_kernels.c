/*
 * pex_kernels.c - pexopt's portable int8 kernels (C99, no malloc, no globals).
 *
 * Every integer kernel equals the numpy simulator of pexopt (pexopt/simulate/kernels.py)
 * bit for bit. pex_affine_s8 and pex_softmax_s8 compute in float64 like the simulator;
 * pex_affine_s8 uses only + - * / and is exact when the compiler does not contract
 * a * b + c into a fused multiply-add (use -ffp-contract=off on cores with a
 * double-precision FPU); pex_softmax_s8 uses the C library's exp/log, which may differ
 * from numpy's in the last bit, so an output can differ by one quantisation step in the
 * (rare) case the exact value lies on a rounding boundary.
 */
#include "pex_kernels.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- fixed point */

static int32_t pex_srdhm(int32_t a, int32_t b)
{
    /* gemmlowp SaturatingRoundingDoublingHighMul */
    int64_t ab;
    int64_t nudge;
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31)); /* truncates toward zero */
}

static int32_t pex_rdbpot(int32_t x, int32_t exponent)
{
    /* gemmlowp RoundingDivideByPOT, exponent 0..31 */
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

static int32_t pex_wrap32(int64_t v)
{
    return (int32_t)(uint32_t)(uint64_t)v;
}

int32_t pex_mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t xl = (int32_t)((uint32_t)x << (left > 31 ? 31 : left));
    return pex_rdbpot(pex_srdhm(xl, multiplier), right > 31 ? 31 : right);
}

static int8_t pex_clamp8(int64_t v, int32_t lo, int32_t hi)
{
    if (v < lo) {
        v = lo;
    }
    if (v > hi) {
        v = hi;
    }
    return (int8_t)v;
}

static int8_t pex_requant(int32_t acc, int32_t mult, int32_t shift, int32_t offset, int32_t lo,
                          int32_t hi)
{
    return pex_clamp8((int64_t)pex_mbqm(acc, mult, shift) + offset, lo, hi);
}

/* C `acc > 0 ? (acc + n/2) / n : (acc - n/2) / n` in 64 bits (0 for n == 0, as numpy). */
static int64_t pex_round_div(int64_t acc, int64_t n)
{
    const int64_t num = acc > 0 ? acc + n / 2 : acc - n / 2;
    return n == 0 ? 0 : num / n;
}

static int32_t pex_ld32(const void *base, int32_t index)
{
    int32_t v;
    memcpy(&v, (const unsigned char *)base + (size_t)index * 4u, sizeof v);
    return v;
}

static void pex_st32(void *base, int32_t index, int32_t v)
{
    memcpy((unsigned char *)base + (size_t)index * 4u, &v, sizeof v);
}

/* ---------------------------------------------------------------- convolutions */

/* Sum over the kernel taps of one output pixel of (x + off) * w, for n input channels:
   `in` points at the first channel to read (pixel stride in_pix), `wf` at the filter's first
   weight of those channels (w_pix weights per tap). Taps in the padding contribute nothing. */
static int32_t pex_conv_taps(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int32_t b,
                             int32_t iy0, int32_t ix0, const int8_t *wf, int32_t w_pix,
                             int32_t n)
{
    const int32_t off = p->in_offset;
    int32_t s = 0;
    int32_t ky, kx, c;
    for (ky = 0; ky < p->kh; ++ky) {
        const int32_t iy = iy0 + ky * p->dh;
        if (iy < 0 || iy >= p->in_h) {
            continue;
        }
        for (kx = 0; kx < p->kw; ++kx) {
            const int32_t ix = ix0 + kx * p->dw;
            const int8_t *xp;
            const int8_t *wp;
            if (ix < 0 || ix >= p->in_w) {
                continue;
            }
            xp = in + ((b * p->in_h + iy) * p->in_w + ix) * in_pix;
            wp = wf + (ky * p->kw + kx) * w_pix;
            for (c = 0; c < n; ++c) {
                s += ((int32_t)xp[c] + off) * (int32_t)wp[c];
            }
        }
    }
    return s;
}

void pex_conv_s8(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                 int32_t out_pix, int32_t oc0, int32_t oc1)
{
    const int32_t cig = p->in_c / p->groups;
    const int32_t cog = p->out_c / p->groups;
    const int32_t filter = p->kh * p->kw * cig;
    int32_t b, oy, ox, o;
    for (b = 0; b < p->batches; ++b) {
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->sh - p->pad_t;
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->sw - p->pad_l;
                int8_t *dst = out + ((b * p->out_h + oy) * p->out_w + ox) * out_pix;
                for (o = oc0; o < oc1; ++o) {
                    const int32_t g = o / cog;
                    const int32_t acc = p->bias[o] + pex_conv_taps(
                        p, in + g * cig, in_pix, b, iy0, ix0, p->weights + o * filter, cig, cig);
                    dst[o - oc0] = pex_requant(acc, p->mult[o], p->shift[o], p->out_offset,
                                               p->act_min, p->act_max);
                }
            }
        }
    }
}

void pex_conv_acc_s8(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int32_t ic0,
                     int32_t ic1, void *acc, int first)
{
    const int32_t n = ic1 - ic0;
    const int32_t filter = p->kh * p->kw * p->in_c;
    int32_t b, oy, ox, o;
    for (b = 0; b < p->batches; ++b) {
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->sh - p->pad_t;
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->sw - p->pad_l;
                const int32_t pix = (b * p->out_h + oy) * p->out_w + ox;
                for (o = 0; o < p->out_c; ++o) {
                    const int32_t s = pex_conv_taps(p, in, in_pix, b, iy0, ix0,
                                                    p->weights + o * filter + ic0, p->in_c, n);
                    int32_t cur;
                    cur = first ? p->bias[o] : pex_ld32(acc, pix * p->out_c + o);
                    pex_st32(acc, pix * p->out_c + o, pex_wrap32((int64_t)cur + s));
                }
            }
        }
    }
}

void pex_dw_conv_s8(const pex_conv_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                    int32_t out_pix, int32_t c0, int32_t c1, const int8_t *w, int32_t w_tap)
{
    const int32_t m = p->ch_mult;
    const int32_t ic_base = c0 / m;
    const int32_t off = p->in_offset;
    int32_t b, oy, ox, j, ky, kx;
    for (b = 0; b < p->batches; ++b) {
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->sh - p->pad_t;
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->sw - p->pad_l;
                int8_t *dst = out + ((b * p->out_h + oy) * p->out_w + ox) * out_pix;
                for (j = 0; j < c1 - c0; ++j) {
                    const int32_t oc = c0 + j;
                    const int32_t ic = oc / m - ic_base;
                    int32_t acc = p->bias[oc];
                    for (ky = 0; ky < p->kh; ++ky) {
                        const int32_t iy = iy0 + ky * p->dh;
                        const int8_t *row;
                        if (iy < 0 || iy >= p->in_h) {
                            continue;
                        }
                        row = in + (b * p->in_h + iy) * p->in_w * in_pix + ic;
                        for (kx = 0; kx < p->kw; ++kx) {
                            const int32_t ix = ix0 + kx * p->dw;
                            if (ix < 0 || ix >= p->in_w) {
                                continue;
                            }
                            acc += ((int32_t)row[ix * in_pix] + off) *
                                   (int32_t)w[(ky * p->kw + kx) * w_tap + j];
                        }
                    }
                    dst[j] = pex_requant(acc, p->mult[oc], p->shift[oc], p->out_offset,
                                         p->act_min, p->act_max);
                }
            }
        }
    }
}

void pex_dw_conv_inplace_s8(const pex_conv_t *p, int8_t *buf, int8_t *scratch)
{
    const int32_t ch = p->out_c;
    const int32_t pixels = p->batches * p->out_h * p->out_w;
    int32_t c, i;
    for (c = 0; c < ch; ++c) {
        pex_dw_conv_s8(p, buf + c, ch, scratch, 1, c, c + 1, p->weights + c, ch);
        for (i = 0; i < pixels; ++i) {
            buf[i * ch + c] = scratch[i];
        }
    }
}

/* ---------------------------------------------------------------- fully connected */

void pex_fc_s8(const pex_fc_t *p, const int8_t *in, int8_t *out, int32_t out_row,
               int32_t oc0, int32_t oc1)
{
    const int32_t off = p->in_offset;
    int32_t r, o, i;
    for (r = 0; r < p->rows; ++r) {
        const int8_t *x = in + r * p->k;
        int8_t *dst = out + r * out_row;
        for (o = oc0; o < oc1; ++o) {
            const int8_t *wr = p->weights + o * p->k;
            int32_t acc = p->bias[o];
            for (i = 0; i < p->k; ++i) {
                acc += ((int32_t)x[i] + off) * (int32_t)wr[i];
            }
            dst[o - oc0] = pex_requant(acc, p->mult[o], p->shift[o], p->out_offset, p->act_min,
                                       p->act_max);
        }
    }
}

void pex_fc_acc_s8(const pex_fc_t *p, const int8_t *in, int32_t in_pix, int32_t ic0,
                   int32_t ic1, void *acc, int first)
{
    const int32_t per_row = p->k / p->in_last;
    const int32_t n = ic1 - ic0;
    const int32_t off = p->in_offset;
    int32_t r, o, q, c;
    for (r = 0; r < p->rows; ++r) {
        for (o = 0; o < p->out_c; ++o) {
            int32_t s = 0;
            int32_t cur;
            for (q = 0; q < per_row; ++q) {
                const int8_t *xp = in + (r * per_row + q) * in_pix;
                const int8_t *wp = p->weights + o * p->k + q * p->in_last + ic0;
                for (c = 0; c < n; ++c) {
                    s += ((int32_t)xp[c] + off) * (int32_t)wp[c];
                }
            }
            cur = first ? p->bias[o] : pex_ld32(acc, r * p->out_c + o);
            pex_st32(acc, r * p->out_c + o, pex_wrap32((int64_t)cur + s));
        }
    }
}

void pex_requantize_s8(void *acc, int32_t pixels, int32_t channels, const int32_t *mult,
                       const int32_t *shift, int32_t out_offset, int32_t act_min,
                       int32_t act_max)
{
    int8_t *out = (int8_t *)acc;
    int32_t i, c;
    for (i = 0; i < pixels; ++i) {
        for (c = 0; c < channels; ++c) {
            const int32_t idx = i * channels + c;
            const int32_t v = pex_ld32(acc, idx); /* read int32 idx before writing byte idx */
            out[idx] = pex_requant(v, mult[c], shift[c], out_offset, act_min, act_max);
        }
    }
}

/* ---------------------------------------------------------------- pooling */

void pex_maxpool_s8(const pex_pool_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                    int32_t out_pix, int32_t channels)
{
    int32_t b, oy, ox, c, ky, kx;
    for (b = 0; b < p->batches; ++b) {
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->sh - p->pad_t;
            const int32_t ky0 = iy0 < 0 ? -iy0 : 0;
            const int32_t ky1 = p->in_h - iy0 < p->kh ? p->in_h - iy0 : p->kh;
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->sw - p->pad_l;
                const int32_t kx0 = ix0 < 0 ? -ix0 : 0;
                const int32_t kx1 = p->in_w - ix0 < p->kw ? p->in_w - ix0 : p->kw;
                int8_t *dst = out + ((b * p->out_h + oy) * p->out_w + ox) * out_pix;
                for (c = 0; c < channels; ++c) {
                    int32_t m = -128;
                    for (ky = ky0; ky < ky1; ++ky) {
                        const int8_t *row = in + (b * p->in_h + iy0 + ky) * p->in_w * in_pix + c;
                        for (kx = kx0; kx < kx1; ++kx) {
                            const int32_t v = row[(ix0 + kx) * in_pix];
                            m = v > m ? v : m;
                        }
                    }
                    if (p->same_q) {
                        dst[c] = pex_clamp8(m, p->act_min, p->act_max);
                    } else {
                        dst[c] = pex_requant(m - p->in_zp, p->mult, p->shift, p->out_zp,
                                             p->act_min, p->act_max);
                    }
                }
            }
        }
    }
}

void pex_avgpool_s8(const pex_pool_t *p, const int8_t *in, int32_t in_pix, int8_t *out,
                    int32_t out_pix, int32_t channels)
{
    /* the box that counts: the image, or the image with its declared padding */
    const int32_t top = p->count_include_pad ? -p->pad_t : 0;
    const int32_t left = p->count_include_pad ? -p->pad_l : 0;
    const int32_t bottom = p->count_include_pad ? p->in_h + p->pad_b : p->in_h;
    const int32_t right = p->count_include_pad ? p->in_w + p->pad_r : p->in_w;
    const int32_t zp = p->same_q ? 0 : p->in_zp;
    int32_t b, oy, ox, c, ky, kx;
    for (b = 0; b < p->batches; ++b) {
        for (oy = 0; oy < p->out_h; ++oy) {
            const int32_t iy0 = oy * p->sh - p->pad_t;
            const int32_t ky0 = iy0 < 0 ? -iy0 : 0;
            const int32_t ky1 = p->in_h - iy0 < p->kh ? p->in_h - iy0 : p->kh;
            const int32_t cy0 = iy0 > top ? iy0 : top;
            const int32_t cy1 = iy0 + p->kh < bottom ? iy0 + p->kh : bottom;
            for (ox = 0; ox < p->out_w; ++ox) {
                const int32_t ix0 = ox * p->sw - p->pad_l;
                const int32_t kx0 = ix0 < 0 ? -ix0 : 0;
                const int32_t kx1 = p->in_w - ix0 < p->kw ? p->in_w - ix0 : p->kw;
                const int32_t cx0 = ix0 > left ? ix0 : left;
                const int32_t cx1 = ix0 + p->kw < right ? ix0 + p->kw : right;
                const int32_t count = (cy1 > cy0 ? cy1 - cy0 : 0) * (cx1 > cx0 ? cx1 - cx0 : 0);
                int8_t *dst = out + ((b * p->out_h + oy) * p->out_w + ox) * out_pix;
                for (c = 0; c < channels; ++c) {
                    int32_t sum = 0;
                    for (ky = ky0; ky < ky1; ++ky) {
                        const int8_t *row = in + (b * p->in_h + iy0 + ky) * p->in_w * in_pix + c;
                        for (kx = kx0; kx < kx1; ++kx) {
                            sum += (int32_t)row[(ix0 + kx) * in_pix] - zp;
                        }
                    }
                    if (p->same_q) {
                        dst[c] = pex_clamp8(pex_round_div(sum, count), p->act_min, p->act_max);
                    } else {
                        const int32_t r = pex_mbqm(sum, p->mult, p->shift);
                        dst[c] = pex_clamp8(pex_round_div(r, count) + p->out_zp, p->act_min,
                                            p->act_max);
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- reductions */

void pex_mean_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                 int32_t axes_mask, int32_t in_zp, int32_t out_zp, int32_t mult,
                 int32_t shift, int32_t act_min, int32_t act_max)
{
    int32_t rd[4], os[4], k;
    int32_t i0, i1, i2, i3, j0, j1, j2, j3;
    int64_t count = 1;
    for (k = 0; k < 4; ++k) {
        const int reduced = (axes_mask >> k) & 1;
        rd[k] = reduced ? xv->d[k] : 1;
        os[k] = reduced ? 0 : xv->s[k]; /* input stride along an output axis */
        count *= rd[k];
    }
    for (i0 = 0; i0 < yv->d[0]; ++i0) {
        for (i1 = 0; i1 < yv->d[1]; ++i1) {
            for (i2 = 0; i2 < yv->d[2]; ++i2) {
                for (i3 = 0; i3 < yv->d[3]; ++i3) {
                    const int8_t *base = x + i0 * os[0] + i1 * os[1] + i2 * os[2] + i3 * os[3];
                    int64_t acc = 0;
                    int32_t r;
                    for (j0 = 0; j0 < rd[0]; ++j0) {
                        for (j1 = 0; j1 < rd[1]; ++j1) {
                            for (j2 = 0; j2 < rd[2]; ++j2) {
                                const int8_t *q = base + j0 * xv->s[0] + j1 * xv->s[1] +
                                                  j2 * xv->s[2];
                                for (j3 = 0; j3 < rd[3]; ++j3) {
                                    acc += (int32_t)q[j3 * xv->s[3]] - in_zp;
                                }
                            }
                        }
                    }
                    r = pex_mbqm(pex_wrap32(acc), mult, shift);
                    y[i0 * yv->s[0] + i1 * yv->s[1] + i2 * yv->s[2] + i3 * yv->s[3]] =
                        pex_clamp8(pex_round_div(r, count) + out_zp, act_min, act_max);
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- element-wise */

void pex_add_s8(const pex_ew_t *p, const int8_t *a, const pex_view *av, const int8_t *b,
                const pex_view *bv, int8_t *y, const pex_view *yv)
{
    const int32_t scale = (int32_t)1 << p->left_shift;
    int32_t i0, i1, i2, i3;
    for (i0 = 0; i0 < yv->d[0]; ++i0) {
        for (i1 = 0; i1 < yv->d[1]; ++i1) {
            for (i2 = 0; i2 < yv->d[2]; ++i2) {
                const int8_t *pa = a + i0 * av->s[0] + i1 * av->s[1] + i2 * av->s[2];
                const int8_t *pb = b + i0 * bv->s[0] + i1 * bv->s[1] + i2 * bv->s[2];
                int8_t *py = y + i0 * yv->s[0] + i1 * yv->s[1] + i2 * yv->s[2];
                for (i3 = 0; i3 < yv->d[3]; ++i3) {
                    const int32_t x1 = pex_wrap32((int64_t)((int32_t)pa[i3 * av->s[3]] +
                                                            p->in1_offset) * scale);
                    const int32_t x2 = pex_wrap32((int64_t)((int32_t)pb[i3 * bv->s[3]] +
                                                            p->in2_offset) * scale);
                    const int32_t s1 = pex_mbqm(x1, p->in1_mult, p->in1_shift);
                    const int32_t s2 = pex_mbqm(x2, p->in2_mult, p->in2_shift);
                    py[i3 * yv->s[3]] = pex_requant(pex_wrap32((int64_t)s1 + s2), p->out_mult,
                                                    p->out_shift, p->out_offset, p->act_min,
                                                    p->act_max);
                }
            }
        }
    }
}

void pex_mul_s8(const pex_ew_t *p, const int8_t *a, const pex_view *av, const int8_t *b,
                const pex_view *bv, int8_t *y, const pex_view *yv)
{
    int32_t i0, i1, i2, i3;
    for (i0 = 0; i0 < yv->d[0]; ++i0) {
        for (i1 = 0; i1 < yv->d[1]; ++i1) {
            for (i2 = 0; i2 < yv->d[2]; ++i2) {
                const int8_t *pa = a + i0 * av->s[0] + i1 * av->s[1] + i2 * av->s[2];
                const int8_t *pb = b + i0 * bv->s[0] + i1 * bv->s[1] + i2 * bv->s[2];
                int8_t *py = y + i0 * yv->s[0] + i1 * yv->s[1] + i2 * yv->s[2];
                for (i3 = 0; i3 < yv->d[3]; ++i3) {
                    const int32_t prod = ((int32_t)pa[i3 * av->s[3]] + p->in1_offset) *
                                         ((int32_t)pb[i3 * bv->s[3]] + p->in2_offset);
                    py[i3 * yv->s[3]] = pex_requant(prod, p->out_mult, p->out_shift,
                                                    p->out_offset, p->act_min, p->act_max);
                }
            }
        }
    }
}

void pex_copy_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                 const int8_t *lut)
{
    int32_t i0, i1, i2, i3;
    for (i0 = 0; i0 < yv->d[0]; ++i0) {
        for (i1 = 0; i1 < yv->d[1]; ++i1) {
            for (i2 = 0; i2 < yv->d[2]; ++i2) {
                const int8_t *px = x + i0 * xv->s[0] + i1 * xv->s[1] + i2 * xv->s[2];
                int8_t *py = y + i0 * yv->s[0] + i1 * yv->s[1] + i2 * yv->s[2];
                if (lut != NULL) {
                    for (i3 = 0; i3 < yv->d[3]; ++i3) {
                        py[i3 * yv->s[3]] = lut[(int32_t)px[i3 * xv->s[3]] + 128];
                    }
                } else {
                    for (i3 = 0; i3 < yv->d[3]; ++i3) {
                        py[i3 * yv->s[3]] = px[i3 * xv->s[3]];
                    }
                }
            }
        }
    }
}

static int8_t pex_quantize_real(double v, double scale, int32_t zp, int32_t lo, int32_t hi)
{
    /* TFLite rounding (halves away from zero), then clamp: pexopt quantize_real */
    const double q = v / scale;
    double r = floor(fabs(q) + 0.5);
    if (q < 0) {
        r = -r;
    }
    r += (double)zp;
    if (r < (double)lo) {
        r = (double)lo;
    }
    if (r > (double)hi) {
        r = (double)hi;
    }
    return (int8_t)r;
}

void pex_affine_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                   const double *a, const pex_view *av, const double *b, const pex_view *bv,
                   double in_scale, int32_t in_zp, double out_scale, int32_t out_zp,
                   int32_t act_min, int32_t act_max)
{
    int32_t i0, i1, i2, i3;
    for (i0 = 0; i0 < yv->d[0]; ++i0) {
        for (i1 = 0; i1 < yv->d[1]; ++i1) {
            for (i2 = 0; i2 < yv->d[2]; ++i2) {
                for (i3 = 0; i3 < yv->d[3]; ++i3) {
                    const int8_t v = x[i0 * xv->s[0] + i1 * xv->s[1] + i2 * xv->s[2] +
                                       i3 * xv->s[3]];
                    const double av_ = a[i0 * av->s[0] + i1 * av->s[1] + i2 * av->s[2] +
                                         i3 * av->s[3]];
                    const double bv_ = b[i0 * bv->s[0] + i1 * bv->s[1] + i2 * bv->s[2] +
                                         i3 * bv->s[3]];
                    const double xr = ((double)v - (double)in_zp) * in_scale;
                    volatile double prod = xr * av_; /* no fused multiply-add */
                    y[i0 * yv->s[0] + i1 * yv->s[1] + i2 * yv->s[2] + i3 * yv->s[3]] =
                        pex_quantize_real(prod + bv_, out_scale, out_zp, act_min, act_max);
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- data movement */

static int32_t pex_pad_source(int32_t i, int32_t n, int32_t mode)
{
    if (i >= 0 && i < n) {
        return i;
    }
    if (mode == 2) { /* edge */
        return i < 0 ? 0 : n - 1;
    }
    if (n == 1) {
        return 0;
    }
    while (i < 0 || i >= n) { /* reflect (numpy: repeated reflection) */
        if (i < 0) {
            i = -i;
        }
        if (i >= n) {
            i = 2 * (n - 1) - i;
        }
    }
    return i;
}

void pex_pad_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                const int32_t before[4], int32_t mode, int32_t value, const int8_t *lut)
{
    int32_t i[4];
    for (i[0] = 0; i[0] < yv->d[0]; ++i[0]) {
        for (i[1] = 0; i[1] < yv->d[1]; ++i[1]) {
            for (i[2] = 0; i[2] < yv->d[2]; ++i[2]) {
                for (i[3] = 0; i[3] < yv->d[3]; ++i[3]) {
                    int32_t k, src = 0, inside = 1;
                    int8_t v;
                    for (k = 0; k < 4; ++k) {
                        int32_t s = i[k] - before[k];
                        if (s < 0 || s >= xv->d[k]) {
                            if (mode == 0) {
                                inside = 0;
                                break;
                            }
                            s = pex_pad_source(s, xv->d[k], mode);
                        }
                        src += s * xv->s[k];
                    }
                    if (inside) {
                        v = lut != NULL ? lut[(int32_t)x[src] + 128] : x[src];
                    } else {
                        v = (int8_t)value;
                    }
                    y[i[0] * yv->s[0] + i[1] * yv->s[1] + i[2] * yv->s[2] + i[3] * yv->s[3]] = v;
                }
            }
        }
    }
}

void pex_resize_nearest_s8(const int8_t *x, const pex_view *xv, int8_t *y, const pex_view *yv,
                           const int32_t *const maps[4], const int8_t *lut)
{
    int32_t i0, i1, i2, i3;
    for (i0 = 0; i0 < yv->d[0]; ++i0) {
        const int32_t s0 = (maps[0] != NULL ? maps[0][i0] : i0) * xv->s[0];
        for (i1 = 0; i1 < yv->d[1]; ++i1) {
            const int32_t s1 = s0 + (maps[1] != NULL ? maps[1][i1] : i1) * xv->s[1];
            for (i2 = 0; i2 < yv->d[2]; ++i2) {
                const int32_t s2 = s1 + (maps[2] != NULL ? maps[2][i2] : i2) * xv->s[2];
                int8_t *py = y + i0 * yv->s[0] + i1 * yv->s[1] + i2 * yv->s[2];
                for (i3 = 0; i3 < yv->d[3]; ++i3) {
                    const int8_t v = x[s2 + (maps[3] != NULL ? maps[3][i3] : i3) * xv->s[3]];
                    py[i3 * yv->s[3]] = lut != NULL ? lut[(int32_t)v + 128] : v;
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- softmax */

static double pex_sm_term(const int8_t *x, int32_t j, int32_t stride, double scale, int32_t zp,
                          double mx)
{
    volatile double xr = ((double)x[j * stride] - (double)zp) * scale; /* no fused mul-sub */
    return exp(xr - mx);
}

/* numpy's pairwise summation (DOUBLE_pairwise_sum) of exp(x_j - mx), j in [lo, lo + n). */
static double pex_sm_pairwise(const int8_t *x, int32_t lo, int32_t n, int32_t stride,
                              double scale, int32_t zp, double mx)
{
    if (n < 8) {
        double res = -0.0;
        int32_t i;
        for (i = 0; i < n; ++i) {
            res += pex_sm_term(x, lo + i, stride, scale, zp, mx);
        }
        return res;
    }
    if (n <= 128) {
        double r[8];
        double res;
        int32_t i, j;
        for (j = 0; j < 8; ++j) {
            r[j] = pex_sm_term(x, lo + j, stride, scale, zp, mx);
        }
        for (i = 8; i < n - (n % 8); i += 8) {
            for (j = 0; j < 8; ++j) {
                r[j] += pex_sm_term(x, lo + i + j, stride, scale, zp, mx);
            }
        }
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) {
            res += pex_sm_term(x, lo + i, stride, scale, zp, mx);
        }
        return res;
    } else {
        int32_t n2 = n / 2;
        n2 -= n2 % 8;
        return pex_sm_pairwise(x, lo, n2, stride, scale, zp, mx) +
               pex_sm_pairwise(x, lo + n2, n - n2, stride, scale, zp, mx);
    }
}

void pex_softmax_s8(const int8_t *x, int8_t *y, int32_t outer, int32_t n, int32_t inner,
                    double in_scale, int32_t in_zp, double out_scale, int32_t out_zp,
                    int32_t act_min, int32_t act_max, int32_t log_softmax)
{
    int32_t o, i, j;
    for (o = 0; o < outer; ++o) {
        for (i = 0; i < inner; ++i) {
            const int8_t *px = x + o * n * inner + i;
            int8_t *py = y + o * n * inner + i;
            int32_t m = -128;
            double mx, sum, lse;
            for (j = 0; j < n; ++j) {
                m = px[j * inner] > m ? px[j * inner] : m;
            }
            mx = ((double)m - (double)in_zp) * in_scale;
            if (inner == 1) {
                sum = pex_sm_pairwise(px, 0, n, inner, in_scale, in_zp, mx);
            } else {
                sum = 0.0;
                for (j = 0; j < n; ++j) {
                    sum += pex_sm_term(px, j, inner, in_scale, in_zp, mx);
                }
            }
            lse = log(sum);
            for (j = 0; j < n; ++j) {
                volatile double xr = ((double)px[j * inner] - (double)in_zp) * in_scale;
                const double z = xr - mx;
                const double v = log_softmax ? z - lse : exp(z - lse);
                py[j * inner] = pex_quantize_real(v, out_scale, out_zp, act_min, act_max);
            }
        }
    }
}
