/* Group normalization (Wu & He 2018, eq. 1-2) of x plus an optional per-channel shift (the
   U-Net's time embedding), optionally followed by SiLU (Elfwing et al. 2018, x sigmoid(x)),
   on channels-last float32 memory, CPU.

   PyTorch's CPU kernels for a channels-last GroupNorm are two to three times slower than its
   contiguous ones when a group holds few channels (the U-Net's common case); these take
   about the time of the contiguous ones, reading memory in its own order: x is [N][L][C]
   with L = H * W pixels, and group g holds channels g * Cg .. (g + 1) * Cg - 1. One sample
   at a time, so a second pass reads what the first left in the cache. With SiLU fused, the
   normalized tensor is neither written nor read back: the backward pass recomputes it.

   Built at run time by ddpmkit_unet/group_norm.py (no PyTorch headers: plain pointers),
   which falls back to PyTorch when no C compiler is found. Sums run in float over blocks of BLOCK
   pixels and in double across blocks, over data shifted by a value of the sample (its first
   pixel) or centred by the group mean, so large means do not cancel the variance away.
   NaN propagates as in PyTorch (no fast-math). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* pixels per task: a sample's pixels are split into blocks of BLOCK, run in parallel */
#define BLOCK 64

static int64_t blocks(int64_t L) { return (L + BLOCK - 1) / BLOCK; }

static int64_t block_end(int64_t b, int64_t L) { return (b + 1) * BLOCK < L ? (b + 1) * BLOCK : L; }

/* exp(x) in float, written so the compiler vectorizes it: x = n ln 2 + r, |r| <= ln 2 / 2,
   e^r by Cephes' expf polynomial, 2^n built in the exponent bits. NaN stays NaN. */
static inline float vexp(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    /* n = x / ln 2 rounded to the nearest integer, by adding and removing 1.5 * 2^23 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

/* the logistic sigmoid 1 / (1 + e^-u) */
static inline float sigmoid(float u) { return 1.0f / (1.0f + vexp(-u)); }

/* Per-channel sums of one block of pixels of one sample: s1 = sum (x - k), s2 = sum (x - k)^2,
   k the sample's first pixel (a shift that keeps the sums' magnitudes small); float within
   the block (at most BLOCK terms), added in double by the caller. */
static void shifted_sums(const float *x, int64_t L, int64_t C, int64_t b, float *s1, float *s2) {
    memset(s1, 0, (size_t)C * sizeof(float));
    memset(s2, 0, (size_t)C * sizeof(float));
    for (int64_t l = b * BLOCK; l < block_end(b, L); ++l) {
        const float *row = x + l * C;
        for (int64_t c = 0; c < C; ++c) {
            float v = row[c] - x[c];
            s1[c] += v;
            s2[c] += v * v;
        }
    }
}

/* Per (group): the mean and rstd of one sample's x + e (x [L][C], e [C] or NULL: zero) from
   its blocks' sums of x shifted by its first pixel k (also the sums of x + e shifted by k + e),
   and each channel's scale a = gamma * rstd and offset o = beta - mean * a. */
static void group_stats(const float *x, const float *e, const float *part, const float *gamma,
                        const float *beta, int64_t L, int64_t C, int64_t G, int64_t nb,
                        double eps, float *mean, float *rstd, float *a, float *o) {
    const int64_t Cg = C / G;
    for (int64_t g = 0; g < G; ++g) {
        double total = 0.0, m2 = 0.0, count = (double)(L * Cg);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
            for (int64_t b = 0; b < nb; ++b) total += part[b * 2 * C + c];
            total += (double)L * ((double)x[c] + (e ? (double)e[c] : 0.0));
        }
        double mu = total / count;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
            /* sum over pixels of (x - mu)^2 = s2 + 2 (k - mu) s1 + L (k - mu)^2 */
            double s1 = 0.0, s2 = 0.0, d = (double)x[c] + (e ? (double)e[c] : 0.0) - mu;
            for (int64_t b = 0; b < nb; ++b) {
                s1 += part[b * 2 * C + c];
                s2 += part[b * 2 * C + C + c];
            }
            m2 += s2 + 2.0 * d * s1 + (double)L * d * d;
        }
        double var = m2 / count, r = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
        mean[g] = (float)mu;
        rstd[g] = (float)r;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
            a[c] = (float)((double)gamma[c] * r);
            o[c] = (float)((double)beta[c] - mu * (double)gamma[c] * r);
        }
    }
}

/* Forward: with z = x + shift (shift [N][C], or NULL: zero), u = (z - mean) * rstd * gamma
   + beta, mean and rstd per (sample, group), written [N][G] for the backward pass; y = u, or
   y = u * sigmoid(u) when silu is set. Returns 0, or -1 when out of memory. */
int gn_forward(const float *x, const float *shift, const float *gamma, const float *beta,
               float *y, float *mean, float *rstd, int64_t N, int64_t L, int64_t C, int64_t G,
               double eps, int silu, int threads) {
    const int64_t nb = blocks(L);
    float *part = malloc((size_t)(nb * 2 * C) * sizeof(float));
    float *a = malloc((size_t)(2 * C) * sizeof(float)), *o = a + C;
    if (!part || !a) {
        free(part);
        free(a);
        return -1;
    }
    for (int64_t n = 0; n < N; ++n) {
        const float *xn = x + n * L * C;
        float *yn = y + n * L * C;
        /* 1. shifted per-channel sums of every block */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t b = 0; b < nb; ++b)
            shifted_sums(xn, L, C, b, part + b * 2 * C, part + b * 2 * C + C);
        /* 2. the groups' mean and rstd; the channels' scale and offset, the shift folded in:
           u = (x + e) * a + o = x * a + (o + e * a) */
        const float *en = shift ? shift + n * C : NULL;
        group_stats(xn, en, part, gamma, beta, L, C, G, nb, eps, mean + n * G, rstd + n * G, a,
                    o);
        if (en)
            for (int64_t c = 0; c < C; ++c) o[c] += en[c] * a[c];
        /* 3. y = u = x * a + o, or u * sigmoid(u) */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t b = 0; b < nb; ++b) {
            for (int64_t l = b * BLOCK; l < block_end(b, L); ++l) {
                const float *xrow = xn + l * C;
                float *out = yn + l * C;
                if (silu) {
                    for (int64_t c = 0; c < C; ++c) {
                        float u = xrow[c] * a[c] + o[c];
                        out[c] = u * sigmoid(u);
                    }
                } else {
                    for (int64_t c = 0; c < C; ++c) out[c] = xrow[c] * a[c] + o[c];
                }
            }
        }
    }
    free(part);
    free(a);
    return 0;
}

/* Backward of the forward above, given dL/dy, so dL/du = dy without SiLU and
   dy * s (1 + u (1 - s)), s = sigmoid(u), with it (u recomputed from x). With z = x + shift
   and m = L * Cg, dbeta = sum du, dgamma = sum du * (z - mean) * rstd (over samples and
   pixels), per (sample, group) dx = gamma * rstd * du - rstd^3 / m * (z - mean) *
   sum(gamma du (z - mean)) - rstd / m * sum(gamma du), and dshift = sum dx over pixels (with
   a shift; dshift may be NULL without one). Returns 0, or -1 when out of memory. */
int gn_backward(const float *dy, const float *x, const float *shift, const float *mean,
                const float *rstd, const float *gamma, const float *beta, float *dx,
                float *dshift, float *dgamma, float *dbeta, int64_t N, int64_t L, int64_t C,
                int64_t G, int silu, int threads) {
    const int64_t Cg = C / G, nb = blocks(L);
    float *part = malloc((size_t)(nb * 2 * C) * sizeof(float));
    double *dsum = calloc((size_t)(2 * C), sizeof(double));
    /* per channel of the sample: its group's mean; u = x * a + o; dx = du * a + x * q + p */
    float *coef = malloc((size_t)(5 * C) * sizeof(float));
    /* with SiLU, one sample's dL/du, written by step 1 and read (from the cache) by step 3 */
    float *du = silu ? malloc((size_t)(L * C) * sizeof(float)) : NULL;
    if (!part || !dsum || !coef || (silu && !du)) {
        free(part);
        free(dsum);
        free(coef);
        free(du);
        return -1;
    }
    float *mc = coef, *a = coef + C, *o = coef + 2 * C, *q = coef + 3 * C, *p = coef + 4 * C;
    for (int64_t n = 0; n < N; ++n) {
        const float *xn = x + n * L * C, *dyn = dy + n * L * C, *mn = mean + n * G;
        const float *rn = rstd + n * G, *dun = silu ? du : dyn;
        /* with the shift folded in: z - mean = x - (mean - e), u = x * a + (o + e * a) */
        const float *en = shift ? shift + n * C : NULL;
        for (int64_t c = 0; c < C; ++c) {
            a[c] = gamma[c] * rn[c / Cg];
            o[c] = beta[c] - mn[c / Cg] * a[c] + (en ? en[c] * a[c] : 0.0f);
            mc[c] = mn[c / Cg] - (en ? en[c] : 0.0f);
        }
        /* 1. per block and channel: sum du (x - mean) and sum du (float in a block) */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t b = 0; b < nb; ++b) {
            float *sd = part + b * 2 * C, *s = sd + C;
            memset(sd, 0, (size_t)(2 * C) * sizeof(float));
            for (int64_t l = b * BLOCK; l < block_end(b, L); ++l) {
                const float *xrow = xn + l * C, *urow = dun + l * C;
                if (silu) {
                    const float *drow = dyn + l * C;
                    float *out = du + l * C;
                    for (int64_t c = 0; c < C; ++c) {
                        float u = xrow[c] * a[c] + o[c], sg = sigmoid(u);
                        out[c] = drow[c] * sg * (1.0f + u * (1.0f - sg));
                    }
                }
                for (int64_t c = 0; c < C; ++c) {
                    sd[c] += urow[c] * (xrow[c] - mc[c]);
                    s[c] += urow[c];
                }
            }
        }
        /* 2. per group: the parameter gradients' terms, and dx's q and p */
        for (int64_t g = 0; g < G; ++g) {
            double r = rn[g], gsd = 0.0, gs = 0.0;
            for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
                double sd = 0.0, s = 0.0;
                for (int64_t b = 0; b < nb; ++b) {
                    sd += part[b * 2 * C + c];
                    s += part[b * 2 * C + C + c];
                }
                dsum[c] += sd * r;
                dsum[C + c] += s;
                gsd += gamma[c] * sd;
                gs += gamma[c] * s;
            }
            double m = (double)(L * Cg), qg = -gsd * r * r * r / m, pg = -qg * mn[g] - gs * r / m;
            for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
                q[c] = (float)qg;
                /* dx = du * a + z * q + p = du * a + x * q + (p + e * q) */
                p[c] = (float)(pg + (en ? (double)en[c] * qg : 0.0));
            }
        }
        /* 3. dx = du * a + x * q + p, reading what step 1 left in the cache; with a shift,
           each block's sum of dx */
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t b = 0; b < nb; ++b) {
            float *sx = part + b * 2 * C;
            if (en) memset(sx, 0, (size_t)C * sizeof(float));
            for (int64_t l = b * BLOCK; l < block_end(b, L); ++l) {
                const float *xrow = xn + l * C, *urow = dun + l * C;
                float *out = dx + n * L * C + l * C;
                for (int64_t c = 0; c < C; ++c) out[c] = urow[c] * a[c] + xrow[c] * q[c] + p[c];
                if (en)
                    for (int64_t c = 0; c < C; ++c) sx[c] += out[c];
            }
        }
        /* 4. dshift = sum of dx over the sample's pixels, the blocks added in order */
        if (en && dshift) {
            for (int64_t c = 0; c < C; ++c) {
                double total = 0.0;
                for (int64_t b = 0; b < nb; ++b) total += part[b * 2 * C + c];
                dshift[n * C + c] = (float)total;
            }
        }
    }
    for (int64_t c = 0; c < C; ++c) {
        dgamma[c] = (float)dsum[c];
        dbeta[c] = (float)dsum[C + c];
    }
    free(part);
    free(dsum);
    free(coef);
    free(du);
    return 0;
}
