"""The two per-pixel loops of the photo path at full resolution, as small C kernels on uint8.

    from core import kernels
    if kernels.available():                       # compiled once per machine, then cached
        kernels.affine_grid_u8(x, grid, ...)      # core/transfer.py: apply_affine_grid_u8 (tone curves first)
        kernels.lut3d_u8(x, lut)                  # lut/model.py: apply_lut on uint8 photos

Why C: at 24 MP each of these loops does 20-30 operations per pixel. In eager PyTorch every
operation is a pass over memory (the affine grid cost 280 ms, the LUT's grid_sample 1.2 s); one
fused loop that reads each uint8 pixel once and writes it once runs within a few times a memory
copy. On CPUs with AVX-512 (BW + VBMI) the grid runs in 16-bit lanes, 64 pixels at a time in
registers (32 in planar rows; byte permutes split and merge the RGB interleave and look the prior's
tone curves up, 256-entry tables): in float16 fused multiply-adds where the CPU has AVX512-FP16,
else in fixed point, within one level of the float path either way; grids whose sums could leave
16 bits, and the whole cubic prior, take a 16-wide float loop; without AVX-512, gcc vectorises
plain loops (-O3 -march=native). The working copy's first steps are here too (box_reduce_u8, then
resample_aa with torch's antialias weights), and the loaded models' channels_last GroupNorm and the
pixel codec's shuffles (small, but PyTorch's strided passes cost several times more). OpenMP
spreads the rows over torch's threads. The library is built with the
system C compiler on first use (about a second) into ~/.cache/estate-edit/kernels
(ESTATE_EDIT_CACHE moves it); with no compiler, or ESTATE_EDIT_KERNELS=0, `available()` is False
and callers use their PyTorch path (the same result within one level of 255;
tests/test_speed_path.py checks every path against the float reference).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float clamp255(float v) { v = v < 0.f ? 0.f : v; return v > 255.f ? 255.f : v; }
static inline int16_t round16(float v) { return (int16_t)(v < 0.f ? v - 0.5f : v + 0.5f); }  /* half away from 0 */

/* One cell span of a row: the coefficients are linear in x there, c = a + f * d. */
static void span(float* restrict R, float* restrict G, float* restrict B, int64_t n,
                 const float* restrict a, const float* restrict d, const float* restrict fx) {
    for (int64_t i = 0; i < n; i++) {
        float f = fx[i], r = R[i], g = G[i], b = B[i];
        float o0 = (a[0] + f * d[0]) * r + (a[1] + f * d[1]) * g + (a[2] + f * d[2]) * b + (a[3] + f * d[3]);
        float o1 = (a[4] + f * d[4]) * r + (a[5] + f * d[5]) * g + (a[6] + f * d[6]) * b + (a[7] + f * d[7]);
        float o2 = (a[8] + f * d[8]) * r + (a[9] + f * d[9]) * g + (a[10] + f * d[10]) * b + (a[11] + f * d[11]);
        R[i] = clamp255(o0) + 0.5f; G[i] = clamp255(o1) + 0.5f; B[i] = clamp255(o2) + 0.5f;
    }
}


#if defined(__SSE4_1__)
#include <immintrin.h>
/* 16 RGB pixels (48 bytes) <-> 16 bytes of each channel, by byte shuffles (gcc does not find this). */
static __m128i MASK_IN[3][3], MASK_OUT[3][3];
static void init_masks(void) {
    for (int ch = 0; ch < 3; ch++) for (int s = 0; s < 3; s++) {
        char in[16], out[16];
        for (int j = 0; j < 16; j++) {
            int src = 3 * j + ch - 16 * s, g = 16 * s + j;
            in[j] = (src >= 0 && src < 16) ? (char)src : (char)0x80;
            out[j] = (g % 3 == ch) ? (char)(g / 3) : (char)0x80;
        }
        MASK_IN[ch][s] = _mm_loadu_si128((const __m128i*)in);
        MASK_OUT[ch][s] = _mm_loadu_si128((const __m128i*)out);
    }
}
static inline void to_float16(__m128i v, float* dst) {
    _mm_storeu_ps(dst, _mm_cvtepi32_ps(_mm_cvtepu8_epi32(v)));
    _mm_storeu_ps(dst + 4, _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_srli_si128(v, 4))));
    _mm_storeu_ps(dst + 8, _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_srli_si128(v, 8))));
    _mm_storeu_ps(dst + 12, _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_srli_si128(v, 12))));
}
static inline __m128i from_float16(const float* src) {  /* src already in [0.5, 255.5]: truncation rounds */
    __m128i a = _mm_packus_epi32(_mm_cvttps_epi32(_mm_loadu_ps(src)), _mm_cvttps_epi32(_mm_loadu_ps(src + 4)));
    __m128i b = _mm_packus_epi32(_mm_cvttps_epi32(_mm_loadu_ps(src + 8)), _mm_cvttps_epi32(_mm_loadu_ps(src + 12)));
    return _mm_packus_epi16(a, b);
}
static int64_t load_hwc_simd(const uint8_t* p, float* R, float* G, float* B, int64_t w) {
    int64_t i = 0;
    for (; i + 16 <= w; i += 16) {
        __m128i c[3] = {_mm_loadu_si128((const __m128i*)(p + 3 * i)),
                        _mm_loadu_si128((const __m128i*)(p + 3 * i + 16)),
                        _mm_loadu_si128((const __m128i*)(p + 3 * i + 32))};
        float* dst[3] = {R + i, G + i, B + i};
        for (int ch = 0; ch < 3; ch++)
            to_float16(_mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(c[0], MASK_IN[ch][0]),
                                                 _mm_shuffle_epi8(c[1], MASK_IN[ch][1])),
                                    _mm_shuffle_epi8(c[2], MASK_IN[ch][2])), dst[ch]);
    }
    return i;
}
static int64_t store_hwc_simd(uint8_t* p, const float* R, const float* G, const float* B, int64_t w) {
    int64_t i = 0;
    for (; i + 16 <= w; i += 16) {
        __m128i v[3] = {from_float16(R + i), from_float16(G + i), from_float16(B + i)};
        for (int s = 0; s < 3; s++)
            _mm_storeu_si128((__m128i*)(p + 3 * i + 16 * s),
                             _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(v[0], MASK_OUT[0][s]),
                                                       _mm_shuffle_epi8(v[1], MASK_OUT[1][s])),
                                          _mm_shuffle_epi8(v[2], MASK_OUT[2][s])));
    }
    return i;
}
#else
static void init_masks(void) {}
static int64_t load_hwc_simd(const uint8_t* p, float* R, float* G, float* B, int64_t w) { return 0; }
static int64_t store_hwc_simd(uint8_t* p, const float* R, const float* G, const float* B, int64_t w) { return 0; }
#endif

/* A row of pixels in and out of three float buffers: interleaved (HWC, cs = 1) or planar. */
static void load_row(const uint8_t* restrict p, int64_t cs, float* restrict R, float* restrict G,
                     float* restrict B, int64_t w) {
    if (cs == 1) { for (int64_t i = load_hwc_simd(p, R, G, B, w); i < w; i++) {
        R[i] = p[3 * i]; G[i] = p[3 * i + 1]; B[i] = p[3 * i + 2]; } }
    else { for (int64_t i = 0; i < w; i++) { R[i] = p[i]; G[i] = p[i + cs]; B[i] = p[i + 2 * cs]; } }
}

static void store_row(uint8_t* restrict p, int64_t cs, const float* restrict R, const float* restrict G,
                      const float* restrict B, int64_t w) {
    if (cs == 1) { for (int64_t i = store_hwc_simd(p, R, G, B, w); i < w; i++) {
        p[3 * i] = (uint8_t)(int)R[i]; p[3 * i + 1] = (uint8_t)(int)G[i]; p[3 * i + 2] = (uint8_t)(int)B[i]; } }
    else { for (int64_t i = 0; i < w; i++) {
        p[i] = (uint8_t)(int)R[i]; p[i + cs] = (uint8_t)(int)G[i]; p[i + 2 * cs] = (uint8_t)(int)B[i]; } }
}

/* What runs on each pixel before the grid (`pre`, levels 0..255 in and out):
   PRE_CURVES: a cubic tone curve per channel, out_c = clamp(k[0][c] + k[1][c] p + k[2][c] p^2 + k[3][c] p^3, 0, 255)
               with p the channel's level (k[j][c] = k[3 j + c], already scaled to levels);
   PRE_POLY:   the colour prior (core/prior.py) itself: out_c = 255 clamp(sum_t m_t(r, g, b) k[3 t + c], 0, 1), r, g, b
               in [0, 1], m the 20 monomials of degree <= 3 in core.prior.MONOMIALS' order. */
enum { PRE_NONE = 0, PRE_CURVES = 1, PRE_POLY = 2 };

/* out_c = o_scale clamp(sum_t m_t(r, g, b) k[3 t + c], 0, 1) with (r, g, b) = s * the inputs (PRE_POLY;
   in and out may be the same rows). */
static void poly_row(const float* R, const float* G, const float* B, float* O0, float* O1, float* O2, int64_t w,
                     const float* restrict k, float s, float o_scale) {
    float k0[20], k1[20], k2[20];  /* per channel, so the loop below is straight-line code gcc vectorises */
    for (int t = 0; t < 20; t++) { k0[t] = k[3 * t]; k1[t] = k[3 * t + 1]; k2[t] = k[3 * t + 2]; }
#define POLY(K) (K[0] + K[1] * r + K[2] * g + K[3] * b + K[4] * rr + K[5] * rg + K[6] * rb + K[7] * gg \
                 + K[8] * gb + K[9] * bb + K[10] * rrr + K[11] * rrg + K[12] * rrb + K[13] * rgg \
                 + K[14] * rgb + K[15] * rbb + K[16] * ggg + K[17] * ggb + K[18] * gbb + K[19] * bbb)
    #pragma GCC ivdep  /* pixel i reads and writes only index i: no dependence between iterations */
    for (int64_t i = 0; i < w; i++) {
        float r = R[i] * s, g = G[i] * s, b = B[i] * s;
        float rr = r * r, rg = r * g, rb = r * b, gg = g * g, gb = g * b, bb = b * b;
        float rrr = rr * r, rrg = rr * g, rrb = rr * b, rgg = r * gg, rgb = r * gb, rbb = r * bb;
        float ggg = gg * g, ggb = gg * b, gbb = g * bb, bbb = bb * b;
        float o0 = POLY(k0), o1 = POLY(k1), o2 = POLY(k2);
        o0 = o0 < 0.f ? 0.f : o0; o1 = o1 < 0.f ? 0.f : o1; o2 = o2 < 0.f ? 0.f : o2;
        O0[i] = (o0 > 1.f ? 1.f : o0) * o_scale;
        O1[i] = (o1 > 1.f ? 1.f : o1) * o_scale;
        O2[i] = (o2 > 1.f ? 1.f : o2) * o_scale;
    }
#undef POLY
}

static void pre_row(float* restrict R, float* restrict G, float* restrict B, int64_t w, int kind,
                    const float* restrict k) {
    if (kind == PRE_CURVES) {
        for (int64_t i = 0; i < w; i++) {
            float r = R[i], g = G[i], b = B[i];
            float o0 = ((k[9] * r + k[6]) * r + k[3]) * r + k[0];
            float o1 = ((k[10] * g + k[7]) * g + k[4]) * g + k[1];
            float o2 = ((k[11] * b + k[8]) * b + k[5]) * b + k[2];
            R[i] = clamp255(o0); G[i] = clamp255(o1); B[i] = clamp255(o2);
        }
        return;
    }
    poly_row(R, G, B, R, G, B, w, k, 1.f / 255.f, 255.f);
}

/* The colour prior on float planes in [0, 1] (core.prior.ColourPrior.forward on the CPU): x, out
   (nimg, 3, hw); each pixel's 20 monomials and three sums in registers, one pass. */
void prior_planes(const float* x, float* out, int64_t nimg, int64_t hw, const float* k, int nthreads) {
    const int64_t chunk = 4096;
    int64_t per = (hw + chunk - 1) / chunk;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t q = 0; q < nimg * per; q++) {
        int64_t bi = q / per, i0 = (q % per) * chunk, n = hw - i0 < chunk ? hw - i0 : chunk;
        const float* p = x + bi * 3 * hw + i0;
        float* o = out + bi * 3 * hw + i0;
        poly_row(p, p + hw, p + 2 * hw, o, o + hw, o + 2 * hw, n, k, 1.f, 1.f);
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VBMI__)
/* AVX-512: 16 pixels at a time, all in registers. A masked 48-byte load and one byte permute
   split RGB, the arithmetic is 16-wide, and a saturating narrow plus one permute interleave it back:
   no float buffers, so each pixel costs its arithmetic (about 30 multiply-adds with the curves). */
#define HAVE_AVX512 1
/* 16 pixels (n of them valid) in and out as three 16-byte channel vectors: interleaved RGB (cs = 1;
   a masked 48-byte load and one byte permute) or planar (channel stride cs). */
static const int8_t SPLIT16[64] = {
    0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45,
    1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40, 43, 46,
    2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44, 47};
static const int8_t MERGE16[64] = {
    0, 16, 32, 1, 17, 33, 2, 18, 34, 3, 19, 35, 4, 20, 36, 5, 21, 37, 6, 22, 38, 7, 23, 39,
    8, 24, 40, 9, 25, 41, 10, 26, 42, 11, 27, 43, 12, 28, 44, 13, 29, 45, 14, 30, 46, 15, 31, 47};

static inline void load16(const uint8_t* p, int64_t i, int64_t n, int64_t w, int64_t cs, __m128i* r, __m128i* g,
                          __m128i* b) {
    if (cs == 1) {  /* a whole 64-byte load while the row has that many bytes left (faster than masked) */
        __m512i raw = 3 * (w - i) >= 64 ? _mm512_loadu_si512(p + 3 * i)
                                        : _mm512_maskz_loadu_epi8((__mmask64)((1ull << (3 * n)) - 1), p + 3 * i);
        __m512i v = _mm512_permutexvar_epi8(_mm512_loadu_si512(SPLIT16), raw);
        *r = _mm512_castsi512_si128(v); *g = _mm512_extracti32x4_epi32(v, 1); *b = _mm512_extracti32x4_epi32(v, 2);
    } else {
        __mmask16 m = (__mmask16)((1u << n) - 1);
        *r = _mm_maskz_loadu_epi8(m, p + i); *g = _mm_maskz_loadu_epi8(m, p + i + cs);
        *b = _mm_maskz_loadu_epi8(m, p + i + 2 * cs);
    }
}

static inline void store16(uint8_t* o, int64_t i, int64_t n, int64_t cs, __m128i r, __m128i g, __m128i b) {
    if (cs == 1) {
        __m512i z = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(r), g, 1), b, 2);
        _mm512_mask_storeu_epi8(o + 3 * i, (__mmask64)((1ull << (3 * n)) - 1),
                                _mm512_permutexvar_epi8(_mm512_loadu_si512(MERGE16), z));
    } else {
        __mmask16 m = (__mmask16)((1u << n) - 1);
        _mm_mask_storeu_epi8(o + i, m, r); _mm_mask_storeu_epi8(o + i + cs, m, g);
        _mm_mask_storeu_epi8(o + i + 2 * cs, m, b);
    }
}

/* The same for 32 pixels of planar images (channel stride cs) as three 32-byte channel vectors
   (the 16-bit grid's planar rows; interleaved rows take 64 pixels at a time, row_int16_hwc64). */
static inline __mmask64 bytes_mask(int64_t nb) { return nb >= 64 ? ~0ull : nb <= 0 ? 0ull : (1ull << nb) - 1; }

static inline void load32(const uint8_t* p, int64_t i, int64_t n, int64_t cs, __m256i* r, __m256i* g, __m256i* b) {
    __mmask32 m = (__mmask32)bytes_mask(n);
    *r = _mm256_maskz_loadu_epi8(m, p + i); *g = _mm256_maskz_loadu_epi8(m, p + i + cs);
    *b = _mm256_maskz_loadu_epi8(m, p + i + 2 * cs);
}

static inline void store32(uint8_t* o, int64_t i, int64_t n, int64_t cs, __m256i r, __m256i g, __m256i b) {
    __mmask32 m = (__mmask32)bytes_mask(n);
    _mm256_mask_storeu_epi8(o + i, m, r); _mm256_mask_storeu_epi8(o + i + cs, m, g);
    _mm256_mask_storeu_epi8(o + i + 2 * cs, m, b);
}

static inline __m512 u8_ps(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)); }
static inline __m128i ps_u8(__m512 v) {  /* rounded to nearest (even), clamped to 0..255 */
    return _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_max_ps(v, _mm512_setzero_ps())));
}
static inline __m512 clamp255v(__m512 v) {
    return _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(255.f));
}
#define BC(x) _mm512_set1_ps(x)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)

static inline void pre_block(__m512* r, __m512* g, __m512* b, int kind, const float* k) {
    if (kind == PRE_CURVES) {
        *r = clamp255v(FMA(FMA(FMA(BC(k[9]), *r, BC(k[6])), *r, BC(k[3])), *r, BC(k[0])));
        *g = clamp255v(FMA(FMA(FMA(BC(k[10]), *g, BC(k[7])), *g, BC(k[4])), *g, BC(k[1])));
        *b = clamp255v(FMA(FMA(FMA(BC(k[11]), *b, BC(k[8])), *b, BC(k[5])), *b, BC(k[2])));
    } else if (kind == PRE_POLY) {
        const __m512 s = BC(1.f / 255.f);
        __m512 m[20];
        m[1] = _mm512_mul_ps(*r, s); m[2] = _mm512_mul_ps(*g, s); m[3] = _mm512_mul_ps(*b, s);
        m[4] = _mm512_mul_ps(m[1], m[1]); m[5] = _mm512_mul_ps(m[1], m[2]); m[6] = _mm512_mul_ps(m[1], m[3]);
        m[7] = _mm512_mul_ps(m[2], m[2]); m[8] = _mm512_mul_ps(m[2], m[3]); m[9] = _mm512_mul_ps(m[3], m[3]);
        m[10] = _mm512_mul_ps(m[4], m[1]); m[11] = _mm512_mul_ps(m[4], m[2]); m[12] = _mm512_mul_ps(m[4], m[3]);
        m[13] = _mm512_mul_ps(m[1], m[7]); m[14] = _mm512_mul_ps(m[1], m[8]); m[15] = _mm512_mul_ps(m[1], m[9]);
        m[16] = _mm512_mul_ps(m[7], m[2]); m[17] = _mm512_mul_ps(m[7], m[3]); m[18] = _mm512_mul_ps(m[2], m[9]);
        m[19] = _mm512_mul_ps(m[9], m[3]);
        __m512 o[3];
        for (int c = 0; c < 3; c++) {  /* two partial sums per channel: shorter dependency chains */
            __m512 even = BC(k[c]), odd = _mm512_mul_ps(BC(k[3 + c]), m[1]);
            for (int t = 2; t < 20; t += 2) {
                even = FMA(BC(k[3 * t + c]), m[t], even);
                if (t + 1 < 20) odd = FMA(BC(k[3 * (t + 1) + c]), m[t + 1], odd);
            }
            o[c] = _mm512_mul_ps(_mm512_min_ps(_mm512_max_ps(_mm512_add_ps(even, odd), _mm512_setzero_ps()), BC(1.f)),
                                 BC(255.f));
        }
        *r = o[0]; *g = o[1]; *b = o[2];
    }
}

/* One row: pixels [xs, xe) lie between grid columns c and c1 (coefficients a, a + d; weight fx). */
static void row_avx512(const uint8_t* restrict p, uint8_t* restrict o, int64_t w, int64_t cs,
                       const float* restrict row, int gw, const int32_t* restrict i0, const int64_t* restrict span_end,
                       const float* restrict fx, int kind, const float* restrict k) {
    for (int64_t xs = 0; xs < w;) {
        int c = i0[xs], c1 = c + 1 < gw ? c + 1 : c;
        int64_t xe = span_end[xs];
        float a[12], d[12];
        for (int q = 0; q < 12; q++) { a[q] = row[c * 12 + q]; d[q] = row[c1 * 12 + q] - a[q]; }
        for (int64_t i = xs; i < xe; i += 16) {
            int64_t n = xe - i < 16 ? xe - i : 16;
            __mmask16 m16 = (__mmask16)((1u << n) - 1);
            __m128i r8, g8, b8;
            load16(p, i, n, w, cs, &r8, &g8, &b8);
            __m512 r = u8_ps(r8), g = u8_ps(g8), b = u8_ps(b8);
            pre_block(&r, &g, &b, kind, k);
            __m512 f = _mm512_maskz_loadu_ps(m16, fx + i);
            /* (a + f d) . [r g b 1] = a . [r g b 1] + f (d . [r g b 1]) */
            __m512 o0 = FMA(BC(a[0]), r, FMA(BC(a[1]), g, FMA(BC(a[2]), b, BC(a[3]))));
            __m512 o1 = FMA(BC(a[4]), r, FMA(BC(a[5]), g, FMA(BC(a[6]), b, BC(a[7]))));
            __m512 o2 = FMA(BC(a[8]), r, FMA(BC(a[9]), g, FMA(BC(a[10]), b, BC(a[11]))));
            o0 = FMA(f, FMA(BC(d[0]), r, FMA(BC(d[1]), g, FMA(BC(d[2]), b, BC(d[3])))), o0);
            o1 = FMA(f, FMA(BC(d[4]), r, FMA(BC(d[5]), g, FMA(BC(d[6]), b, BC(d[7])))), o1);
            o2 = FMA(f, FMA(BC(d[8]), r, FMA(BC(d[9]), g, FMA(BC(d[10]), b, BC(d[11])))), o2);
            store16(o, i, n, cs, ps_u8(o0), ps_u8(o1), ps_u8(o2));
        }
        xs = xe;
    }
}
#undef BC
#undef FMA

/* The same row in 16-bit fixed point, 32 pixels of a planar row at a time (twice the lanes of
   float and no conversions): the pixel after `pre` in 1/128 of a level (a 256-entry table per
   channel, looked up by word permutes), A in 1/4096 (each row's cells quantised once, all at once;
   d = the next cell's A minus this one's), sums in 1/16 of a level, f in 1/32768; each product
   rounded (vpmulhrsw), the result rounded half up and saturated to 0..255.
   At most about 0.3 of a level from the float path before rounding. The caller checks the grid's
   range (no sum can leave 16 bits). */
static inline __m512i lut256_epi16(const int16_t* restrict t, __m512i idx) {
    __m512i q0 = _mm512_permutex2var_epi16(_mm512_loadu_si512(t), idx, _mm512_loadu_si512(t + 32));
    __m512i q1 = _mm512_permutex2var_epi16(_mm512_loadu_si512(t + 64), idx, _mm512_loadu_si512(t + 96));
    __m512i q2 = _mm512_permutex2var_epi16(_mm512_loadu_si512(t + 128), idx, _mm512_loadu_si512(t + 160));
    __m512i q3 = _mm512_permutex2var_epi16(_mm512_loadu_si512(t + 192), idx, _mm512_loadu_si512(t + 224));
    __mmask32 b6 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(64));
    __mmask32 b7 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(128));
    return _mm512_mask_blend_epi16(b7, _mm512_mask_blend_epi16(b6, q0, q1), _mm512_mask_blend_epi16(b6, q2, q3));
}

static inline __m512i affine3_epi16(__m512i t0, __m512i t1, __m512i t2, const int16_t* q) {
    __m512i s = _mm512_adds_epi16(_mm512_mulhrs_epi16(t0, _mm512_set1_epi16(q[0])),
                                  _mm512_mulhrs_epi16(t1, _mm512_set1_epi16(q[1])));
    return _mm512_adds_epi16(s, _mm512_adds_epi16(_mm512_mulhrs_epi16(t2, _mm512_set1_epi16(q[2])),
                                                  _mm512_set1_epi16(q[3])));
}

/* A row's grid coefficients (gw cells x 12, float) in the 16-bit path's units, all cells at once:
   q = A in 1/4096 and b in 1/16 of a level (plus 8: the rounding of the final >> 4), d = the next
   cell's q minus this one's (0 for the last cell). */
static void quantise_row(const float* restrict row, int gw, int16_t* restrict q, int16_t* restrict d) {
    const __m512 scale = _mm512_setr_ps(4096.f, 4096.f, 4096.f, 16.f, 4096.f, 4096.f, 4096.f, 16.f,
                                        4096.f, 4096.f, 4096.f, 16.f, 4096.f, 4096.f, 4096.f, 16.f);
    const __m512i half = _mm512_setr_epi32(0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0, 8);
    int n = gw * 12;  /* a multiple of 4; rows are padded by 16 floats */
    for (int j = 0; j < n; j += 16) {
        __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + j), scale)), half);
        _mm256_storeu_si256((__m256i*)(q + j), _mm512_cvtsepi32_epi16(v));
    }
    for (int j = 0; j + 12 < n; j++) d[j] = (int16_t)(q[j + 12] - q[j]);
    for (int j = n - 12; j < n; j++) d[j] = 0;
}

/* One output channel of 32 pixels: (A + f D) . [t 1] with A, D one channel's row of the cell (in
   1/4096, b in 1/16 of a level plus the rounding 8), back to levels (may lie outside 0..255). */
static inline __m512i grid_epi16(__m512i r, __m512i g, __m512i b, __m512i f, const int16_t* aq, const int16_t* dq) {
    return _mm512_srai_epi16(_mm512_adds_epi16(affine3_epi16(r, g, b, aq),
                                               _mm512_mulhrs_epi16(f, affine3_epi16(r, g, b, dq))), 4);
}

/* The same in float16 (AVX512-FP16): 32 lanes of fused multiply-adds, half the instructions of the
   16-bit products plus adds. Pixels and outputs centred on 128 levels (|v| <= 128, where float16's
   step is at most 1/16 of a level; the tone tables hold float16 levels minus 128, and the grid's b and
   d take the shift: centre_grid), A and D as float16, f in float16; each of the seven fused steps
   rounds once, the result rounded to the nearest level (even) in 16 bits, saturated to -128..127 and
   moved back by flipping the top bit (out16). half: 1 = this path, 0 = the 16-bit fixed point
   (always_inline callers pass a constant, so each gets its own loop). */
#if defined(__AVX512FP16__)
#define HAVE_FP16 1
/* acc + x * m with m a coefficient vector read from memory by the instruction (a plain 64-byte load;
   broadcasting a 16-bit value, even inside the instruction, costs a shuffle, and the shuffle port is
   the one the byte permutes already fill). Written as asm: gcc would otherwise keep the 24 vectors
   in registers and spill. */
static inline __m512h fma_mem(__m512h x, const __m512h* m, __m512h acc) {
    __asm__("vfmadd231ph %2, %1, %0" : "+v"(acc) : "v"(x), "m"(*m));
    return acc;
}
/* cf: a channel's 8 coefficient vectors, [A | b] then [D | d] (float16). */
static inline __m512i grid_ph(__m512i r, __m512i g, __m512i b, __m512i f, const __m512h* cf) {
    __m512h rh = _mm512_castsi512_ph(r), gh = _mm512_castsi512_ph(g), bh = _mm512_castsi512_ph(b);
    __m512h a = fma_mem(rh, cf, fma_mem(gh, cf + 1, fma_mem(bh, cf + 2, cf[3])));
    __m512h d = fma_mem(rh, cf + 4, fma_mem(gh, cf + 5, fma_mem(bh, cf + 6, cf[7])));
    return _mm512_cvtph_epi16(_mm512_fmadd_ph(_mm512_castsi512_ph(f), d, a));
}
/* A span's 24 coefficients (channel c: cf[8 c .. 8 c + 7], as grid_ph reads them) broadcast once for
   all its blocks. */
static inline void span_coeffs(__m512h* cf, const int16_t* aq, const int16_t* dq) {
    for (int c = 0; c < 3; c++)
        for (int k = 0; k < 4; k++) {
            cf[8 * c + k] = _mm512_set1_ph(*(const _Float16*)(aq + 4 * c + k));
            cf[8 * c + 4 + k] = _mm512_set1_ph(*(const _Float16*)(dq + 4 * c + k));
        }
}
#endif
static inline __attribute__((always_inline)) __m512i grid16(int half, __m512i r, __m512i g, __m512i b, __m512i f,
                                                            const int16_t* aq, const int16_t* dq, const void* cf) {
#ifdef HAVE_FP16
    if (half) return grid_ph(r, g, b, f, (const __m512h*)cf);
#endif
    return grid_epi16(r, g, b, f, aq, dq);
}

#ifdef HAVE_FP16
#define SPAN_COEFFS(name, aq, dq) __m512h name[24]; if (half) span_coeffs(name, aq, dq)
#else
#define SPAN_COEFFS(name, aq, dq) const void* name = NULL
#endif

/* A pixel's 16-bit value with no tone curve: levels in 1/128 (fixed point) or levels - 128 as float16. */
static inline __attribute__((always_inline)) __m512i plain16(int half, __m512i v) {
#ifdef HAVE_FP16
    if (half) return _mm512_castph_si512(_mm512_cvtepi16_ph(_mm512_sub_epi16(v, _mm512_set1_epi16(128))));
#endif
    return _mm512_slli_epi16(v, 7);
}

/* 32 results in 16 bits -> bytes 0..255 (the half path's are centred on 128). */
static inline __attribute__((always_inline)) __m256i out16(int half, __m512i v) {
    if (half) return _mm256_xor_si256(_mm512_cvtsepi16_epi8(v), _mm256_set1_epi8((char)0x80));
    return _mm512_cvtusepi16_epi8(_mm512_max_epi16(v, _mm512_setzero_si512()));
}

/* The half path's grid (nimg * cells cells of [A | b] x 3 channels, b in levels), centred: for
   pixels t - 128 and outputs out - 128, b becomes b + 128 (sum of the channel's A) - 128. Interpolating
   rows and columns commutes with this (it is affine in the coefficients, and the weights sum to 1). */
static float* centre_grid(const float* grid, int64_t cells) {
    float* c = malloc(sizeof(float) * cells * 12);
    for (int64_t i = 0; i < cells * 12; i += 4) {
        const float* a = grid + i;
        c[i] = a[0]; c[i + 1] = a[1]; c[i + 2] = a[2];
        c[i + 3] = a[3] + 128.f * (a[0] + a[1] + a[2]) - 128.f;
    }
    return c;
}

/* A row's coefficients as float16 bits (the half path's quantise_row): q = [A | b] (b in levels),
   d = the next cell's minus this one's, taken in float before rounding (0 for the last cell). */
static void half_row(const float* restrict row, int gw, int16_t* restrict q, int16_t* restrict d) {
    int n = gw * 12;  /* row has 16 floats of padding and more scratch after it: the tail's d is redone */
    for (int j = 0; j < n; j += 16) {
        __m512 a = _mm512_loadu_ps(row + j), next = _mm512_loadu_ps(row + j + 12);
        _mm256_storeu_si256((__m256i*)(q + j), _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm256_storeu_si256((__m256i*)(d + j), _mm512_cvtps_ph(_mm512_sub_ps(next, a),
                                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (int j = n - 12; j < n; j++) d[j] = 0;
}

static inline __attribute__((always_inline)) void row_int16(
        const uint8_t* restrict p, uint8_t* restrict o, int64_t w, int64_t cs, const int16_t* restrict rq,
        const int16_t* restrict rd, const int32_t* restrict i0, const int64_t* restrict span_end,
        const int16_t* restrict fq, const int16_t* restrict tables, int half) {
    for (int64_t xs = 0; xs < w;) {
        const int16_t *aq = rq + 12 * i0[xs], *dq = rd + 12 * i0[xs];
        int64_t xe = span_end[xs];
        SPAN_COEFFS(cf, aq, dq);
        for (int64_t i = xs; i < xe; i += 32) {
            int64_t n = xe - i < 32 ? xe - i : 32;
            __m256i r8, g8, b8;
            load32(p, i, n, cs, &r8, &g8, &b8);
            __m512i r = _mm512_cvtepu8_epi16(r8), g = _mm512_cvtepu8_epi16(g8), b = _mm512_cvtepu8_epi16(b8);
            if (tables) {
                r = lut256_epi16(tables, r); g = lut256_epi16(tables + 256, g); b = lut256_epi16(tables + 512, b);
            } else {
                r = plain16(half, r); g = plain16(half, g); b = plain16(half, b);
            }
            __m512i f = n == 32 ? _mm512_loadu_si512(fq + i)
                                : _mm512_maskz_loadu_epi16((__mmask32)bytes_mask(n), fq + i);
            __m512i out[3];
            for (int ch = 0; ch < 3; ch++) out[ch] = grid16(half, r, g, b, f, aq + 4 * ch, dq + 4 * ch, cf + 8 * ch);
            store32(o, i, n, cs, out16(half, out[0]), out16(half, out[1]), out16(half, out[2]));
        }
        xs = xe;
    }
}

/* Interleaved RGB rows, 64 pixels (192 bytes) a block: the tone curves are looked up on bytes, 64
   lanes at a time (the high and the low byte of each 16-bit table entry from two 128-byte halves,
   chosen by the index's top bit), and unpacking low and high bytes gives the 16-bit values of two
   halves of the block, pixels 16 L + 0..7 and 16 L + 8..15 of each 128-bit lane L; f follows that
   order, and packing the halves back restores the pixel order. Same arithmetic, same results as
   row_int16. The byte-permute index tables, built once per call (block64_tables). */
typedef struct {
    int8_t split_a[3][64], split_c[3][64], merge_rg[3][64], merge_b[3][64];
    __mmask64 split_m[3], merge_m[3];
    int16_t f_order[2][32];
    uint8_t hi[3][256], lo[3][256];  /* the tone tables' high and low bytes */
} block64_t;

static void block64_tables(block64_t* t, const int16_t* tables) {
    for (int c = 0; c < 3; c++) {
        t->split_m[c] = 0;
        for (int px = 0; px < 64; px++) {  /* pixel px, channel c: byte 3 px + c of the three loads */
            int b = 3 * px + c;
            t->split_a[c][px] = (int8_t)(b < 128 ? b : 0);
            t->split_c[c][px] = (int8_t)(b < 128 ? 0 : b - 128);
            if (b >= 128) t->split_m[c] |= 1ull << px;
        }
    }
    for (int o = 0; o < 3; o++) {
        t->merge_m[o] = 0;
        for (int j = 0; j < 64; j++) {  /* output byte 64 o + j: pixel q / 3, channel q % 3 */
            int q = 64 * o + j, px = q / 3, c = q % 3;
            t->merge_rg[o][j] = (int8_t)(c == 0 ? px : c == 1 ? 64 + px : 0);
            t->merge_b[o][j] = (int8_t)(c == 2 ? px : 0);
            if (c == 2) t->merge_m[o] |= 1ull << j;
        }
    }
    for (int lane = 0; lane < 4; lane++)
        for (int m = 0; m < 8; m++) {
            t->f_order[0][8 * lane + m] = (int16_t)(16 * lane + m);
            t->f_order[1][8 * lane + m] = (int16_t)(16 * lane + 8 + m);
        }
    if (tables)
        for (int c = 0; c < 3; c++)
            for (int v = 0; v < 256; v++) {
                t->hi[c][v] = (uint8_t)((uint16_t)tables[256 * c + v] >> 8);
                t->lo[c][v] = (uint8_t)((uint16_t)tables[256 * c + v] & 255);
            }
}

static inline __attribute__((always_inline)) void tone64(const block64_t* t, int c, int use_tables, int half,
                                                         __m512i u, __m512i* w0, __m512i* w1) {
    if (!use_tables) {
        __m512i zero = _mm512_setzero_si512();
        *w0 = plain16(half, _mm512_unpacklo_epi8(u, zero));
        *w1 = plain16(half, _mm512_unpackhi_epi8(u, zero));
        return;
    }
    __mmask64 top = _mm512_movepi8_mask(u);
    const uint8_t *hi = t->hi[c], *lo = t->lo[c];
    __m512i h = _mm512_mask_blend_epi8(top,
        _mm512_permutex2var_epi8(_mm512_loadu_si512(hi), u, _mm512_loadu_si512(hi + 64)),
        _mm512_permutex2var_epi8(_mm512_loadu_si512(hi + 128), u, _mm512_loadu_si512(hi + 192)));
    __m512i l = _mm512_mask_blend_epi8(top,
        _mm512_permutex2var_epi8(_mm512_loadu_si512(lo), u, _mm512_loadu_si512(lo + 64)),
        _mm512_permutex2var_epi8(_mm512_loadu_si512(lo + 128), u, _mm512_loadu_si512(lo + 192)));
    *w0 = _mm512_unpacklo_epi8(l, h);
    *w1 = _mm512_unpackhi_epi8(l, h);
}

/* The input is prefetched PF_DIST bytes ahead (one photo's two streams per thread outrun the hardware
   prefetcher: 12.0 -> 10.8 ms at 24 MP in alternated calls; 768 to 3072 bytes all alike). */
#define PF_DIST 1536
static inline __attribute__((always_inline)) void row_int16_hwc64(
        const uint8_t* restrict p, uint8_t* restrict o, int64_t w, const int16_t* restrict rq,
        const int16_t* restrict rd, const int32_t* restrict i0, const int64_t* restrict span_end,
        const int16_t* restrict fq, int use_tables, const block64_t* restrict t, int half) {
    const __m512i fo0 = _mm512_loadu_si512(t->f_order[0]), fo1 = _mm512_loadu_si512(t->f_order[1]);
    for (int64_t xs = 0; xs < w;) {
        const int16_t *aq = rq + 12 * i0[xs], *dq = rd + 12 * i0[xs];
        int64_t xe = span_end[xs];
        SPAN_COEFFS(cf, aq, dq);
        for (int64_t i = xs; i < xe; i += 64) {
            int64_t n = xe - i < 64 ? xe - i : 64;
            const uint8_t* q = p + 3 * i;
            for (int k = 0; k < 3; k++) _mm_prefetch((const char*)q + PF_DIST + 64 * k, _MM_HINT_T0);
            __m512i v[3], fa, fb;
            if (n == 64) {
                for (int k = 0; k < 3; k++) v[k] = _mm512_loadu_si512(q + 64 * k);
                fa = _mm512_loadu_si512(fq + i); fb = _mm512_loadu_si512(fq + i + 32);
            } else {
                for (int k = 0; k < 3; k++) v[k] = _mm512_maskz_loadu_epi8(bytes_mask(3 * n - 64 * k), q + 64 * k);
                fa = _mm512_maskz_loadu_epi16((__mmask32)bytes_mask(n), fq + i);
                fb = _mm512_maskz_loadu_epi16((__mmask32)bytes_mask(n - 32), fq + i + 32);
            }
            __m512i x[2][3];  /* [half][channel], 16-bit, after the tone curves */
            for (int c = 0; c < 3; c++) {
                __m512i u = _mm512_mask_blend_epi8(t->split_m[c],
                    _mm512_permutex2var_epi8(v[0], _mm512_loadu_si512(t->split_a[c]), v[1]),
                    _mm512_permutexvar_epi8(_mm512_loadu_si512(t->split_c[c]), v[2]));
                tone64(t, c, use_tables, half, u, &x[0][c], &x[1][c]);
            }
            __m512i f[2] = {_mm512_permutex2var_epi16(fa, fo0, fb), _mm512_permutex2var_epi16(fa, fo1, fb)};
            __m512i res[2][3];
            for (int c = 0; c < 3; c++)  /* channel by channel: its 8 coefficients, both halves */
                for (int hf = 0; hf < 2; hf++)
                    res[hf][c] = grid16(half, x[hf][0], x[hf][1], x[hf][2], f[hf], aq + 4 * c, dq + 4 * c,
                                        cf + 8 * c);
            __m512i R, G, B;  /* the half path's results are centred: signed saturation, top bit flipped */
            if (half) {
                R = _mm512_packs_epi16(res[0][0], res[1][0]); G = _mm512_packs_epi16(res[0][1], res[1][1]);
                B = _mm512_packs_epi16(res[0][2], res[1][2]);
                const __m512i top = _mm512_set1_epi8((char)0x80);
                R = _mm512_xor_si512(R, top); G = _mm512_xor_si512(G, top); B = _mm512_xor_si512(B, top);
            } else {
                R = _mm512_packus_epi16(res[0][0], res[1][0]); G = _mm512_packus_epi16(res[0][1], res[1][1]);
                B = _mm512_packus_epi16(res[0][2], res[1][2]);
            }
            for (int k = 0; k < 3; k++) {
                __m512i out = _mm512_mask_blend_epi8(t->merge_m[k],
                    _mm512_permutex2var_epi8(R, _mm512_loadu_si512(t->merge_rg[k]), G),
                    _mm512_permutexvar_epi8(_mm512_loadu_si512(t->merge_b[k]), B));
                if (n == 64) _mm512_storeu_si512(o + 3 * i + 64 * k, out);
                else _mm512_mask_storeu_epi8(o + 3 * i + 64 * k, bytes_mask(3 * n - 64 * k), out);
            }
        }
        xs = xe;
    }
}
#endif


/* end[i]: where the run of pixels sharing pixel i's cell (i0[i]) ends; i0 never decreases. */
static void cell_runs(const int32_t* restrict i0, int64_t w, int64_t* restrict end) {
    for (int64_t i = w - 1; i >= 0; i--) end[i] = (i + 1 < w && i0[i + 1] == i0[i]) ? end[i + 1] : i + 1;
}

/* x, out: nimg images of h x w RGB uint8, HWC (planar = 0) or CHW (planar = 1).
   grid: (nimg, gh, gw, 12) float [A | b] in units of 255: out = A @ pre(rgb) + b.
   Rows read grid rows j0, j1 with weight fy; pixels read cells i0, i0 + 1 with weight fx.
   pre_kind, pre: what runs on each pixel before the grid (PRE_NONE, PRE_CURVES with (4, 3)
   coefficients, PRE_POLY with the (20, 3) coefficients of the colour prior). */
void affine_grid_u8(const uint8_t* x, uint8_t* out, int64_t nimg, int64_t h, int64_t w, int planar,
                    const float* grid, int gh, int gw, const int32_t* j0, const int32_t* j1,
                    const float* fy, const int32_t* i0, const float* fx, int pre_kind, const float* pre,
                    const int16_t* tables, int fixed, int nthreads) {
    init_masks();
    int16_t* fq = malloc(sizeof(int16_t) * (w + 32));
    for (int64_t i = 0; i < w; i++) fq[i] = round16(fx[i] * 32768.f < 32767.f ? fx[i] * 32768.f : 32767.f);
    float* centred = NULL;
#ifdef HAVE_FP16
    if (fixed == 2) {
        for (int64_t i = 0; i < w; i++) { _Float16 v = (_Float16)fx[i]; memcpy(fq + i, &v, sizeof v); }
        grid = centred = centre_grid(grid, nimg * gh * gw);
    }
#endif
    int64_t* span_end = malloc(sizeof(int64_t) * (w + 1));  /* where the run of pixels sharing pixel i's cell ends */
#ifdef HAVE_AVX512
    block64_t b64;
    if (fixed && !planar) block64_tables(&b64, tables);
#endif
    cell_runs(i0, w, span_end);
    #pragma omp parallel num_threads(nthreads)
    {
        float* buf = malloc(sizeof(float) * (gw * 12 + 3 * w + 48));
        int16_t* rq = malloc(sizeof(int16_t) * 2 * (gw * 12 + 32));  /* the 16-bit path's row, quantised */
        int16_t* rd = rq + gw * 12 + 32;
        float *row = buf, *R = buf + gw * 12 + 16, *G = R + w + 16, *B = G + w + 16;
        int64_t cs = planar ? h * w : 1;
        #pragma omp for schedule(static)
        for (int64_t by = 0; by < nimg * h; by++) {
            int64_t bi = by / h, y = by % h;
            const float* g0 = grid + (bi * gh + j0[y]) * gw * 12;
            const float* g1 = grid + (bi * gh + j1[y]) * gw * 12;
            float t = fy[y];
            for (int k = 0; k < gw * 12; k++) row[k] = g0[k] + t * (g1[k] - g0[k]);
            int64_t offset = planar ? bi * 3 * h * w + y * w : (bi * h + y) * w * 3;
#ifdef HAVE_AVX512
#ifdef HAVE_FP16
            if (fixed == 2) {
                half_row(row, gw, rq, rd);
                if (planar) row_int16(x + offset, out + offset, w, cs, rq, rd, i0, span_end, fq, tables, 1);
                else row_int16_hwc64(x + offset, out + offset, w, rq, rd, i0, span_end, fq, tables != 0, &b64, 1);
            } else
#endif
            if (fixed) {
                quantise_row(row, gw, rq, rd);
                if (planar) row_int16(x + offset, out + offset, w, cs, rq, rd, i0, span_end, fq, tables, 0);
                else row_int16_hwc64(x + offset, out + offset, w, rq, rd, i0, span_end, fq, tables != 0, &b64, 0);
            }
            else row_avx512(x + offset, out + offset, w, cs, row, gw, i0, span_end, fx, pre_kind, pre);
#else
            load_row(x + offset, cs, R, G, B, w);
            if (pre_kind != PRE_NONE) pre_row(R, G, B, w, pre_kind, pre);
            for (int64_t xs = 0; xs < w;) {
                int c = i0[xs], c1 = i0[xs] + 1 < gw ? i0[xs] + 1 : i0[xs];
                int64_t xe = span_end[xs];
                float a[12], d[12];
                for (int k = 0; k < 12; k++) { a[k] = row[c * 12 + k]; d[k] = row[c1 * 12 + k] - a[k]; }
                span(R + xs, G + xs, B + xs, xe - xs, a, d, fx + xs);
                xs = xe;
            }
            store_row(out + offset, cs, R, G, B, w);
#endif
        }
        free(buf);
        free(rq);
    }
    free(fq);
    free(span_end);
    free(centred);
}

/* Box reduction by k (the working copy's first step at large sizes): out (nimg, 3, ceil(h / k),
   ceil(w / k)) float, each the mean of its k x k block of uint8 pixels (a partial block at the right
   or bottom edge: the mean of the pixels it has), in levels 0..255. Per block row: the k rows are
   summed in 16 bits, 64 bytes at a time in registers (one read of the photo), into a row of sums;
   then each run of k pixels: for k <= 16 (k a constant in an unrolled loop, one copy per k) the three
   channels of a pixel side by side in one 64-bit word (16-bit fields: a block's sum is at most
   16 * 16 * 255 = 65280, so no field carries into the next), else one channel at a time in 32 bits. */
static void sum_rows(const uint8_t* restrict p, int64_t stride, int64_t rows, int64_t n, uint16_t* restrict acc) {
    int64_t i = 0;
#ifdef HAVE_AVX512
    for (; i + 64 <= n; i += 64) {
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
        for (int64_t y = 0; y < rows; y++) {
            const uint8_t* q = p + y * stride + i;
            _mm_prefetch((const char*)q + 512, _MM_HINT_T0);  /* k rows at once: 4.2 -> 3.8 ms at 24 MP, k = 7 */
            s0 = _mm512_add_epi16(s0, _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)q)));
            s1 = _mm512_add_epi16(s1, _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(q + 32))));
        }
        _mm512_storeu_si512(acc + i, s0);
        _mm512_storeu_si512(acc + i + 32, s1);
    }
#endif
    for (int64_t j = i; j < n; j++) acc[j] = 0;
    for (int64_t y = 0; y < rows; y++)
        for (int64_t j = i; j < n; j++) acc[j] = (uint16_t)(acc[j] + p[y * stride + j]);
}

/* One block row's means from its row of sums (interleaved: acc holds 3 w sums), k <= 16: each
   pixel's three sums read as one 64-bit word; k a constant here (box_row_k below), so the compiler
   unrolls the run of k words. */
static inline __attribute__((always_inline)) void box_row_hwc(const uint16_t* restrict acc, float* restrict o,
                                                              int64_t w, const int k, int64_t rows, int64_t plane) {
    int64_t wo = (w + k - 1) / k, whole = w / k;
    float inv = 1.f / (float)(k * rows);
    for (int64_t xo = 0; xo < wo; xo++) {
        const uint16_t* a = acc + 3 * k * xo;
        uint64_t s = 0, word;
        if (xo < whole) {
            for (int j = 0; j < k; j++) { memcpy(&word, a + 3 * j, 8); s += word; }
        } else {  /* the partial block at the right edge */
            for (int64_t j = 0; j < w - k * xo; j++) { memcpy(&word, a + 3 * j, 8); s += word; }
            inv = 1.f / (float)((w - k * xo) * rows);
        }
        o[xo] = (float)(s & 0xffff) * inv;
        o[plane + xo] = (float)((s >> 16) & 0xffff) * inv;
        o[2 * plane + xo] = (float)((s >> 32) & 0xffff) * inv;
    }
}

static void box_row_k(const uint16_t* acc, float* o, int64_t w, int k, int64_t rows, int64_t plane) {
    switch (k) {
#define K(n) case n: box_row_hwc(acc, o, w, n, rows, plane); return;
        K(1) K(2) K(3) K(4) K(5) K(6) K(7) K(8) K(9) K(10) K(11) K(12) K(13) K(14) K(15) K(16)
#undef K
    }
}

void box_reduce_u8(const uint8_t* x, float* out, int64_t nimg, int64_t h, int64_t w, int planar, int k,
                   int nthreads) {
    int64_t ho = (h + k - 1) / k, wo = (w + k - 1) / k;
    #pragma omp parallel num_threads(nthreads)
    {
        uint16_t* acc = calloc(3 * w + 8, sizeof(uint16_t));  /* padded: a pixel's 64-bit word reads 4 fields */
        #pragma omp for schedule(static)
        for (int64_t by = 0; by < nimg * ho; by++) {
            int64_t bi = by / ho, yo = by % ho, y0 = yo * k, rows = (y0 + k < h ? y0 + k : h) - y0;
            float* o = out + (bi * 3 * ho + yo) * wo;
            if (planar) {
                for (int c = 0; c < 3; c++) {
                    sum_rows(x + ((bi * 3 + c) * h + y0) * w, w, rows, w, acc);
                    for (int64_t xo = 0; xo < wo; xo++) {
                        int64_t x0 = xo * k, x1 = x0 + k < w ? x0 + k : w;
                        uint32_t s = 0;
                        for (int64_t i = x0; i < x1; i++) s += acc[i];
                        o[c * ho * wo + xo] = (float)s / (float)((x1 - x0) * rows);
                    }
                }
            } else {
                sum_rows(x + (bi * h + y0) * w * 3, 3 * w, rows, 3 * w, acc);
                if (k <= 16) {
                    box_row_k(acc, o, w, k, rows, ho * wo);
                    continue;
                }
                for (int64_t xo = 0; xo < wo; xo++) {
                    int64_t x0 = xo * k, x1 = x0 + k < w ? x0 + k : w;
                    uint32_t s[3] = {0, 0, 0};
                    for (int64_t i = x0; i < x1; i++)
                        for (int c = 0; c < 3; c++) s[c] += acc[3 * i + c];
                    float inv = 1.f / (float)((x1 - x0) * rows);
                    for (int c = 0; c < 3; c++) o[c * ho * wo + xo] = (float)s[c] * inv;
                }
            }
        }
        free(acc);
    }
}

/* Separable resampling of float planes (the working copy's second step, after the box reduction):
   x (planes, h, w) -> out (planes, ho, wo); output row yo is the sum over yn[yo] input rows from
   y0[yo] with weights yw[yo * ky + t], output column likewise (x0, xn, xw, kx). Rows first, over the
   whole width (vectorised), then columns from those rows. The weights come from the caller
   (core/kernels.py: torch's antialiased bicubic and bilinear filters). With AVX-512, 16 output rows
   at a time: their rows of the first pass are gathered column by column (tt[x][r]), so each output
   column is one 16-wide sum over its taps for all 16 rows, in the taps' order as the scalar loop. */
static void resample_row(const float* src, int64_t w, int64_t yo, const int32_t* y0, const int32_t* yn,
                         const float* yw, int ky, float* restrict acc) {
    for (int64_t i = 0; i < w; i++) acc[i] = 0.f;
    for (int t = 0; t < yn[yo]; t++) {
        const float wt = yw[yo * ky + t];
        const float* restrict r = src + (int64_t)(y0[yo] + t) * w;
        for (int64_t i = 0; i < w; i++) acc[i] += wt * r[i];
    }
}

void resample_planes(const float* x, float* out, int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo,
                     const int32_t* y0, const int32_t* yn, const float* yw, int ky,
                     const int32_t* x0, const int32_t* xn, const float* xw, int kx, int nthreads) {
#ifdef HAVE_AVX512
    int64_t blocks = (ho + 15) / 16;
    #pragma omp parallel num_threads(nthreads)
    {
        float* tmp = malloc(sizeof(float) * 16 * w);
        float* tt = malloc(sizeof(float) * 16 * w);
        const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                                  15), _mm512_set1_epi32((int)w));
        #pragma omp for schedule(static)
        for (int64_t pb = 0; pb < planes * blocks; pb++) {
            int64_t pl = pb / blocks, top = (pb % blocks) * 16, n = ho - top < 16 ? ho - top : 16;
            for (int r = 0; r < n; r++) resample_row(x + pl * h * w, w, top + r, y0, yn, yw, ky, tmp + r * w);
            for (int r = n; r < 16; r++)  /* past the plane's end: a copy of its last row, read, never written */
                memcpy(tmp + r * w, tmp + (n - 1) * w, sizeof(float) * w);
            for (int64_t i = 0; i < w; i++) _mm512_storeu_ps(tt + 16 * i, _mm512_i32gather_ps(rows, tmp + i, 4));
            for (int64_t xo = 0; xo < wo; xo++) {
                const float* c = tt + 16 * (int64_t)x0[xo];
                const float* wt = xw + xo * kx;
                __m512 acc = _mm512_setzero_ps();
                for (int t = 0; t < xn[xo]; t++)
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(wt[t]), _mm512_loadu_ps(c + 16 * t), acc);
                float lane[16];
                _mm512_storeu_ps(lane, acc);
                for (int r = 0; r < n; r++) out[(pl * ho + top + r) * wo + xo] = lane[r];
            }
        }
        free(tmp);
        free(tt);
    }
#else
    #pragma omp parallel num_threads(nthreads)
    {
        float* tmp = malloc(sizeof(float) * (w + 16));
        #pragma omp for schedule(static)
        for (int64_t po = 0; po < planes * ho; po++) {
            int64_t pl = po / ho, yo = po % ho;
            resample_row(x + pl * h * w, w, yo, y0, yn, yw, ky, tmp);
            float* o = out + (pl * ho + yo) * wo;
            for (int64_t xo = 0; xo < wo; xo++) {
                const float* r = tmp + x0[xo];
                const float* wt = xw + xo * kx;
                float acc = 0.f;
                for (int t = 0; t < xn[xo]; t++) acc += wt[t] * r[t];
                o[xo] = acc;
            }
        }
        free(tmp);
    }
#endif
}

/* The grid fit's moments (core/transfer.py fit_affine_grid): x, y (nimg, 3, h, w) float, the
   working-size input and output; stats (nimg, gh, gw, 28) double, zeroed by the caller, gets per cell
   the tent-weighted sums of [x 1][x 1]^T (16, row-major) and [x 1] y^T (12). Pixel column i spreads
   to cells i0, i1 with weights 1 - fx, fx (a row of partial sums), row j to j0, j1 with 1 - fy, fy. */
#ifdef HAVE_AVX512
/* One row's moments into rb (gw cells x 32: [x 1][x 1]^T row-major, then [x 1] y^T as 4 rows of 4, the
   last of each unused): a pixel's 32 products are four 8-double vectors; each run of pixels of one
   cell pair is summed in registers (sum f and sum fx f), then added to its two cells once. */
static void moments_row(const float* xr, const float* yr, int64_t plane, int64_t w, const int32_t* i0,
                        const int32_t* i1, const int64_t* span_end, const double* fx, double* rb) {
    const __m512i lo = _mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1), hi = _mm512_setr_epi64(2, 2, 2, 2, 3, 3, 3, 3);
    for (int64_t xs = 0; xs < w;) {
        int64_t xe = span_end[xs];
        __m512d S[4], T[4];
        for (int k = 0; k < 4; k++) S[k] = T[k] = _mm512_setzero_pd();
        for (int64_t i = xs; i < xe; i++) {
            __m512d v = _mm512_setr_pd(xr[i], xr[plane + i], xr[2 * plane + i], 1.0,
                                       xr[i], xr[plane + i], xr[2 * plane + i], 1.0);
            __m512d o = _mm512_setr_pd(yr[i], yr[plane + i], yr[2 * plane + i], 0.0,
                                       yr[i], yr[plane + i], yr[2 * plane + i], 0.0);
            __m512d a01 = _mm512_permutexvar_pd(lo, v), a23 = _mm512_permutexvar_pd(hi, v);
            __m512d f[4] = {_mm512_mul_pd(a01, v), _mm512_mul_pd(a23, v), _mm512_mul_pd(a01, o),
                            _mm512_mul_pd(a23, o)};
            __m512d t = _mm512_set1_pd(fx[i]);
            for (int k = 0; k < 4; k++) { S[k] = _mm512_add_pd(S[k], f[k]); T[k] = _mm512_fmadd_pd(t, f[k], T[k]); }
        }
        double *r0 = rb + (int64_t)i0[xs] * 32, *r1 = rb + (int64_t)i1[xs] * 32;
        for (int k = 0; k < 4; k++) {  /* cell i0 gets sum (1 - fx) f, cell i1 sum fx f */
            _mm512_storeu_pd(r0 + 8 * k, _mm512_add_pd(_mm512_loadu_pd(r0 + 8 * k), _mm512_sub_pd(S[k], T[k])));
            _mm512_storeu_pd(r1 + 8 * k, _mm512_add_pd(_mm512_loadu_pd(r1 + 8 * k), T[k]));
        }
        xs = xe;
    }
}
#else
static void moments_row(const float* xr, const float* yr, int64_t plane, int64_t w, const int32_t* i0,
                        const int32_t* i1, const int64_t* span_end, const double* fx, double* rb) {
    for (int64_t i = 0; i < w; i++) {
        double v[4] = {xr[i], xr[plane + i], xr[2 * plane + i], 1.0};
        double o[4] = {yr[i], yr[plane + i], yr[2 * plane + i], 0.0};
        double f[32];
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++) { f[4 * a + b] = v[a] * v[b]; f[16 + 4 * a + b] = v[a] * o[b]; }
        double w1 = fx[i], w0 = 1.0 - w1;
        double *r0 = rb + (int64_t)i0[i] * 32, *r1 = rb + (int64_t)i1[i] * 32;
        for (int k = 0; k < 32; k++) { r0[k] += w0 * f[k]; r1[k] += w1 * f[k]; }
    }
}
#endif

void grid_moments(const float* x, const float* y, int64_t nimg, int64_t h, int64_t w, int gh, int gw,
                  const int32_t* j0, const int32_t* j1, const double* fy, const int32_t* i0, const int32_t* i1,
                  const double* fx, double* stats, int nthreads) {
    int64_t* span_end = malloc(sizeof(int64_t) * (w + 1));
    cell_runs(i0, w, span_end);
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t bi = 0; bi < nimg; bi++) {
        double* rb = malloc(sizeof(double) * gw * 32);
        const float *xr = x + bi * 3 * h * w, *yr = y + bi * 3 * h * w;
        double* st = stats + bi * gh * gw * 28;
        for (int64_t yy = 0; yy < h; yy++) {
            for (int k = 0; k < gw * 32; k++) rb[k] = 0.0;
            moments_row(xr + yy * w, yr + yy * w, h * w, w, i0, i1, span_end, fx, rb);
            double t1 = fy[yy], t0 = 1.0 - t1;
            double *s0 = st + (int64_t)j0[yy] * gw * 28, *s1 = st + (int64_t)j1[yy] * gw * 28;
            for (int c = 0; c < gw; c++)
                for (int k = 0; k < 28; k++) {  /* rb's 32 per cell -> the 28 of stats (y^T rows of 3) */
                    double r = rb[c * 32 + (k < 16 ? k : 16 + (k - 16) / 3 * 4 + (k - 16) % 3)];
                    s0[c * 28 + k] += t0 * r;
                    s1[c * 28 + k] += t1 * r;
                }
        }
        free(rb);
    }
    free(span_end);
}

/* The grid fit's ridge solves (core/transfer.py _ridge_solve, fit_affine_grid) from its moments:
   stats (nimg, cells, 28) as grid_moments gives them; per image the global fit (moments summed over
   the cells, pulled toward the identity), then each cell's (pulled toward the global one); out (nimg,
   cells, 3, 4) float [A | b]. M = S_xx + D, D = diag(eps n [1 1 1 0] + 1e-6 n + 1e-9), n = S_xx[3][3];
   theta (4 x 3) = M^-1 (S_xy + D prior), by elimination with partial pivoting, in double. */
static void ridge4(const double* st, double eps, const double* prior, double* theta) {
    double m[4][7], n = st[15];
    for (int r = 0; r < 4; r++) {
        double d = (r < 3 ? eps * n : 0.0) + 1e-6 * n + 1e-9;
        for (int c = 0; c < 4; c++) m[r][c] = st[r * 4 + c] + (r == c ? d : 0.0);
        for (int c = 0; c < 3; c++) m[r][4 + c] = st[16 + r * 3 + c] + d * prior[r * 3 + c];
    }
    for (int k = 0; k < 4; k++) {
        int piv = k;
        for (int r = k + 1; r < 4; r++) if (fabs(m[r][k]) > fabs(m[piv][k])) piv = r;
        if (piv != k) for (int c = 0; c < 7; c++) { double t = m[k][c]; m[k][c] = m[piv][c]; m[piv][c] = t; }
        for (int r = k + 1; r < 4; r++) {
            double f = m[r][k] / m[k][k];
            for (int c = k; c < 7; c++) m[r][c] -= f * m[k][c];
        }
    }
    for (int k = 3; k >= 0; k--)
        for (int c = 0; c < 3; c++) {
            double v = m[k][4 + c];
            for (int j = k + 1; j < 4; j++) v -= m[k][j] * theta[j * 3 + c];
            theta[k * 3 + c] = v / m[k][k];
        }
}

void ridge_grid(const double* stats, int64_t nimg, int64_t cells, double eps, float* out, int nthreads) {
    static const double identity[12] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0};
    double* global = malloc(sizeof(double) * 12 * nimg);
    for (int64_t bi = 0; bi < nimg; bi++) {
        double total[28] = {0};
        for (int64_t c = 0; c < cells; c++)
            for (int k = 0; k < 28; k++) total[k] += stats[(bi * cells + c) * 28 + k];
        ridge4(total, eps, identity, global + 12 * bi);
    }
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < nimg * cells; i++) {
        double theta[12];
        ridge4(stats + i * 28, eps, global + 12 * (i / cells), theta);
        for (int ch = 0; ch < 3; ch++)
            for (int k = 0; k < 4; k++) out[i * 12 + ch * 4 + k] = (float)theta[k * 3 + ch];
    }
    free(global);
}

/* The packed table of the AVX-512 look-up, straight from the LUT: lut (nimg, 3, s, s, s) in levels,
   indexed [channel][blue][green][red]; out (256, 256, s) uint32 for image bi: at each red level
   (cell idx, weight frac) and blue level, the LUT interpolated along red and blue, at each of the s
   green entries (side by side: a pixel's two green neighbours are one 64-bit word), three channels in
   32 bits: red and green 11 bits (q = (v + 64) * 16 / 3, a step of 3/16 of a level), blue 10 bits
   (q = (v + 64) * 8 / 3), v clamped to -64..320 levels. 16 green entries at a time in registers. */
#ifdef HAVE_AVX512
static inline __m512i pack16(__m512 fb, __mmask16 m, const float* a, const float* z, int64_t stride) {
    const float scale[3] = {16.f / 3.f, 16.f / 3.f, 8.f / 3.f}, top[3] = {2047.f, 2047.f, 1023.f};
    __m512i v = _mm512_setzero_si512();
    for (int c = 0; c < 3; c++) {  /* truncation of q + 0.5 rounds half up */
        __m512 lo = _mm512_maskz_loadu_ps(m, a + c * stride), hi = _mm512_maskz_loadu_ps(m, z + c * stride);
        __m512 q = _mm512_fmadd_ps(_mm512_add_ps(_mm512_fmadd_ps(fb, _mm512_sub_ps(hi, lo), lo), _mm512_set1_ps(64.f)),
                                   _mm512_set1_ps(scale[c]), _mm512_set1_ps(0.5f));
        q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(top[c]));
        v = _mm512_or_si512(v, _mm512_slli_epi32(_mm512_cvttps_epi32(q), 11 * c));
    }
    return v;
}

void pack_lut(const float* restrict lut, int64_t bi, int s, const int32_t* restrict idx,
              const float* restrict frac, uint32_t* restrict out, int nthreads) {
    int64_t s2 = (int64_t)s * s, s3 = s2 * s;
    #pragma omp parallel num_threads(nthreads)
    {
        float* e = malloc(sizeof(float) * 3 * s2);  /* [channel][blue][green] at this red level */
        #pragma omp for schedule(static)
        for (int v = 0; v < 256; v++) {
            int r0 = idx[v];
            float f = frac[v];
            for (int c = 0; c < 3; c++)
                for (int bj = 0; bj < s; bj++)
                    for (int gi = 0; gi < s; gi++) {
                        const float* t = lut + (bi * 3 + c) * s3 + bj * s2 + (int64_t)gi * s + r0;
                        e[(c * s + bj) * s + gi] = t[0] + f * (t[1] - t[0]);
                    }
            for (int b = 0; b < 256; b++) {
                const float* a = e + idx[b] * s;
                __m512 fb = _mm512_set1_ps(frac[b]);
                uint32_t* o = out + ((int64_t)v * 256 + b) * s;
                for (int gi = 0; gi < s; gi += 16) {
                    __mmask16 m = (__mmask16)(s - gi >= 16 ? 0xffff : (1u << (s - gi)) - 1);
                    _mm512_mask_storeu_epi32(o + gi, m, pack16(fb, m, a + gi, a + s + gi, s2));
                }
            }
        }
        free(e);
    }
}
#else
void pack_lut(const float* lut, int64_t bi, int s, const int32_t* idx, const float* frac, uint32_t* out,
              int nthreads) {}
#endif

/* Does this build have the 16-bit path (AVX-512 BW + VBMI): 0 = no, 1 = fixed point, 2 = also float16? */
int has_fixed_point(void) {
#if defined(HAVE_FP16)
    return 2;
#elif defined(HAVE_AVX512)
    return 1;
#else
    return 0;
#endif
}

/* Trilinear 3D LUT on uint8 pixels. table: (nimg, 256, s, s, 3) float, the LUT already
   interpolated along red at the 256 input levels, then [green][blue][channel], in units of 255.
   idx[v], frac[v]: the cell and weight of level v along green and blue (idx <= s - 2). */
static void lut_row(const uint8_t* restrict p, uint8_t* restrict o, int64_t w, int64_t ps, int64_t cs,
                    const float* restrict tb, int s, const int32_t* restrict idx, const float* restrict frac) {
    for (int64_t i = 0; i < w; i++) {
        int r = p[i * ps], g = p[i * ps + cs], b = p[i * ps + 2 * cs];
        const float* restrict t0 = tb + ((r * s + idx[g]) * s + idx[b]) * 3;
        const float* restrict t1 = t0 + s * 3;
        float fg = frac[g], fb = frac[b], v[3];
        for (int c = 0; c < 3; c++) {
            float lo = t0[c] + fb * (t0[c + 3] - t0[c]);
            float hi = t1[c] + fb * (t1[c + 3] - t1[c]);
            v[c] = clamp255(lo + fg * (hi - lo)) + 0.5f;
        }
        o[i * ps] = (uint8_t)(int)v[0]; o[i * ps + cs] = (uint8_t)(int)v[1]; o[i * ps + 2 * cs] = (uint8_t)(int)v[2];
    }
}


#ifdef HAVE_AVX512
/* The look-up from the packed table (pack_lut): a pixel's red and blue levels and green cell pick one
   64-bit word (green entries gi and gi + 1). One group of 16 pixels for lut_row_packed16: the green
   pairs e0, e1 of each pixel (two 8-lane gathers) and the weight along green in 1/32768 (32-bit
   lanes). n <= 0: nothing to read. */
static inline void lut_group(const uint8_t* restrict p, int64_t i, int64_t n, int64_t w, int64_t cs,
                             const uint32_t* restrict tb, __m512 step, __m512i top, __m512i bs,
                             __m512i* e0, __m512i* e1, __m512i* fq) {
    static const int32_t even_idx[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    if (n <= 0) { *e0 = *e1 = *fq = _mm512_setzero_si512(); return; }
    const __m512i even = _mm512_loadu_si512(even_idx), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __mmask16 m16 = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
    __m128i r8, g8, b8;
    load16(p, i, n < 16 ? n : 16, w, cs, &r8, &g8, &b8);
    __m512 gp = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(g8)), step);
    __m512i gi = _mm512_min_epi32(_mm512_cvttps_epi32(gp), top);
    *fq = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(gp, _mm512_cvtepi32_ps(gi)), _mm512_set1_ps(32768.f)));
    __m512i rb = _mm512_or_si512(_mm512_slli_epi32(_mm512_cvtepu8_epi32(r8), 8), _mm512_cvtepu8_epi32(b8));
    __m512i base = _mm512_maskz_add_epi32(m16, _mm512_mullo_epi32(rb, bs), gi);  /* (256 r + b) s + gi; lanes
                                                                                    past the row read entry 0 */
    __m512i lo = _mm512_i32gather_epi64(_mm512_castsi512_si256(base), tb, 4);
    __m512i hi = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(base, 1), tb, 4);
    *e0 = _mm512_permutex2var_epi32(lo, even, hi);
    *e1 = _mm512_permutex2var_epi32(lo, odd, hi);
}

/* The packed look-up 32 pixels at a time in 16-bit lanes (two groups of 16, their 32-bit fields packed
   together): a field F (11 bits; blue 10) interpolated along green as 16 F + (16 (F1 - F)) w (w in 1/32768,
   each product rounded), then to levels, 16 F * 3/256 (blue 3/128) - 64, rounded half up and saturated:
   within 1/128 of a level of the float interpolation of the same fields, half the lanes' work. */
static void lut_row_packed16(const uint8_t* restrict p, uint8_t* restrict o, int64_t w, int64_t cs,
                             const uint32_t* restrict tb, int s) {
    static const int8_t ORDER[32] = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27,
                                     4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    const __m256i order = _mm256_loadu_si256((const __m256i*)ORDER);  /* packs' lane order -> A then B */
    const __m512 step = _mm512_set1_ps((float)(s - 1) / 255.f);
    const __m512i top = _mm512_set1_epi32(s - 2), bs = _mm512_set1_epi32(s);
    const __m512i zero = _mm512_setzero_si512(), off = _mm512_set1_epi16(64);
    for (int64_t i = 0; i < w; i += 32) {
        int64_t n = w - i < 32 ? w - i : 32;
        __m512i e0a, e1a, fa, e0b, e1b, fb;
        lut_group(p, i, n, w, cs, tb, step, top, bs, &e0a, &e1a, &fa);
        lut_group(p, i + 16, n - 16, w, cs, tb, step, top, bs, &e0b, &e1b, &fb);
        __m512i f = _mm512_packs_epi32(fa, fb);  /* 32768 (weight 1) saturates to 32767 */
        __m128i lo8[3], hi8[3];
        for (int c = 0; c < 3; c++) {
            __m512i mask = _mm512_set1_epi32(c < 2 ? 2047 : 1023);
            __m512i a = _mm512_packus_epi32(_mm512_and_si512(_mm512_srli_epi32(e0a, 11 * c), mask),
                                            _mm512_and_si512(_mm512_srli_epi32(e0b, 11 * c), mask));
            __m512i z = _mm512_packus_epi32(_mm512_and_si512(_mm512_srli_epi32(e1a, 11 * c), mask),
                                            _mm512_and_si512(_mm512_srli_epi32(e1b, 11 * c), mask));
            __m512i q = _mm512_add_epi16(_mm512_slli_epi16(a, 4),
                                         _mm512_mulhrs_epi16(_mm512_slli_epi16(_mm512_sub_epi16(z, a), 4), f));
            __m512i v = _mm512_sub_epi16(_mm512_mulhrs_epi16(q, _mm512_set1_epi16(c < 2 ? 384 : 768)), off);
            __m256i b = _mm256_permutexvar_epi8(order, _mm512_cvtusepi16_epi8(_mm512_max_epi16(v, zero)));
            lo8[c] = _mm256_castsi256_si128(b);
            hi8[c] = _mm256_extracti128_si256(b, 1);
        }
        store16(o, i, n < 16 ? n : 16, cs, lo8[0], lo8[1], lo8[2]);
        if (n > 16) store16(o, i + 16, n - 16, cs, hi8[0], hi8[1], hi8[2]);
    }
}
#endif

/* The pixel codec's shuffles (core/codecs.py PixelCodec), without autograd. x: (n, c, h, w) planar float;
   z: the latents (n, c f f, h / f, w / f) in channels_last memory, i.e. (n, h / f, w / f, c f f), channel
   (ci f + i) f + j of latent pixel (y, x) being image pixel (f y + i, f x + j) of channel ci.
   unshuffle: z = x * scale + shift; shuffle: x = z * scale + shift. Each image row maps
   to runs of f consecutive floats in z: one pass, rows spread over the threads. */
void pixel_unshuffle_cl(const float* x, float* z, int64_t n, int64_t c, int64_t h, int64_t w, int f,
                        float scale, float shift, int nthreads) {
    int64_t hf = h / f, wf = w / f, cff = c * f * f;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < n * c * h; r++) {
        int64_t b = r / (c * h), ci = (r / h) % c, yy = r % h, y = yy / f, i = yy % f;
        const float* src = x + r * w;
        float* dst = z + (b * hf + y) * wf * cff + (ci * f + i) * f;
        for (int64_t xb = 0; xb < wf; xb++)
            for (int j = 0; j < f; j++) dst[xb * cff + j] = src[xb * f + j] * scale + shift;
    }
}

void pixel_shuffle_cl(const float* z, float* x, int64_t n, int64_t c, int64_t h, int64_t w, int f,
                      float scale, float shift, int nthreads) {
    int64_t hf = h / f, wf = w / f, cff = c * f * f;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < n * c * h; r++) {
        int64_t b = r / (c * h), ci = (r / h) % c, yy = r % h, y = yy / f, i = yy % f;
        float* dst = x + r * w;
        const float* src = z + (b * hf + y) * wf * cff + (ci * f + i) * f;
        for (int64_t xb = 0; xb < wf; xb++)
            for (int j = 0; j < f; j++) dst[xb * f + j] = src[xb * cff + j] * scale + shift;
    }
}

/* GroupNorm on channels_last float images: x, out (n, hw, c) (NHWC memory), `groups` groups of c / groups
   consecutive channels, per-channel weight and bias. Per image: the channels' sums over the pixels (c
   floats a pixel, a vector of 16 channels at a time), then each group's mean; the same for the squared
   deviations from it (two passes: no cancellation); then out = x a + s per channel. The images are
   spread over the threads. (PyTorch's channels_last GroupNorm took ~200 us on a 4 x 32 x 20 x 32 batch.) */
void group_norm_nhwc(const float* x, float* out, int64_t n, int64_t hw, int64_t c, int groups,
                     const float* weight, const float* bias, float eps, int nthreads) {
    int64_t cpg = c / groups;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float* xi = x + i * hw * c;
        float* oi = out + i * hw * c;
        float* acc = calloc(2 * c + 16, sizeof(float));
        float *a = acc, *sh = acc + c;
        double mean[groups > 0 ? groups : 1], var[groups > 0 ? groups : 1];
        for (int64_t p = 0; p < hw; p++)
            for (int64_t k = 0; k < c; k++) a[k] += xi[p * c + k];
        for (int g = 0; g < groups; g++) {
            double m = 0;
            for (int64_t k = g * cpg; k < (g + 1) * cpg; k++) m += a[k];
            mean[g] = m / (double)(hw * cpg);
        }
        for (int64_t k = 0; k < c; k++) { sh[k] = (float)mean[k / cpg]; a[k] = 0.f; }
        for (int64_t p = 0; p < hw; p++)
            for (int64_t k = 0; k < c; k++) { float d = xi[p * c + k] - sh[k]; a[k] += d * d; }
        for (int g = 0; g < groups; g++) {
            double v = 0;
            for (int64_t k = g * cpg; k < (g + 1) * cpg; k++) v += a[k];
            var[g] = v / (double)(hw * cpg);
        }
        for (int64_t k = 0; k < c; k++) {
            int g = (int)(k / cpg);
            float rstd = (float)(1.0 / sqrt(var[g] + (double)eps));
            a[k] = rstd * weight[k];
            sh[k] = bias[k] - (float)mean[g] * a[k];
        }
        for (int64_t p = 0; p < hw; p++)
            for (int64_t k = 0; k < c; k++) oi[p * c + k] = xi[p * c + k] * a[k] + sh[k];
        free(acc);
    }
}

void lut3d_u8(const uint8_t* x, uint8_t* out, int64_t nimg, int64_t h, int64_t w, int planar,
              const float* table, int s, const int32_t* idx, const float* frac, const float* levels,
              uint32_t* packed, int nthreads) {
    int64_t cs = planar ? h * w : 1;
    for (int64_t bi = 0; bi < nimg; bi++) {
        if (packed) pack_lut(levels, bi, s, idx, frac, packed, nthreads);
        #pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int64_t y = 0; y < h; y++) {
            int64_t offset = planar ? bi * 3 * h * w + y * w : (bi * h + y) * w * 3;
#ifdef HAVE_AVX512
            if (packed) {
                lut_row_packed16(x + offset, out + offset, w, cs, packed, s);
                continue;
            }
#endif
            const float* tb = table + bi * 256 * s * s * 3;
            if (planar) lut_row(x + offset, out + offset, w, 1, cs, tb, s, idx, frac);
            else lut_row(x + offset, out + offset, w, 3, 1, tb, s, idx, frac);
        }
    }
}
"""
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("ESTATE_EDIT_CACHE") or Path.home() / ".cache" / "estate-edit"
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    """The CPU's feature flags: -march=native builds for this CPU, so a cache shared with another
    machine (a network home folder) must not hand it this one's library."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler found (install gcc, or set CC)")
    key = hashlib.sha1((SOURCE + " ".join(FLAGS) + platform.machine() + compiler + _cpu_flags()).encode())
    key = key.hexdigest()[:16]
    target = _cache_dir() / f"photo_kernels_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
            src.write_text(SOURCE)
            for flags in (FLAGS, [f for f in FLAGS if f != "-march=native"]):
                done = subprocess.run([compiler, *flags, "-o", str(lib), str(src)], capture_output=True, text=True)
                if done.returncode == 0:
                    break
            else:
                raise OSError(f"{compiler} failed: {done.stderr.strip()[:500]}")
            os.replace(lib, target)  # atomic: another process may be building the same file
    lib = ctypes.CDLL(str(target))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.affine_grid_u8.argtypes = [ptr, ptr, i64, i64, i64, i32, ptr, i32, i32, ptr, ptr, ptr, ptr, ptr, i32, ptr, ptr,
                                   i32, i32]
    lib.has_fixed_point.restype = ctypes.c_int
    lib.prior_planes.argtypes = [ptr, ptr, i64, i64, ptr, i32]
    lib.box_reduce_u8.argtypes = [ptr, ptr, i64, i64, i64, i32, i32, i32]
    lib.resample_planes.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, i32, ptr, ptr, ptr, i32,
                                    i32]
    lib.pack_lut.argtypes = [ptr, i64, i32, ptr, ptr, ptr, i32]
    lib.grid_moments.argtypes = [ptr, ptr, i64, i64, i64, i32, i32, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32]
    lib.ridge_grid.argtypes = [ptr, i64, i64, ctypes.c_double, ptr, i32]
    lib.lut3d_u8.argtypes = [ptr, ptr, i64, i64, i64, i32, ptr, i32, ptr, ptr, ptr, ptr, i32]
    lib.group_norm_nhwc.argtypes = [ptr, ptr, i64, i64, i64, i32, ptr, ptr, ctypes.c_float, i32]
    f32 = ctypes.c_float
    lib.pixel_unshuffle_cl.argtypes = [ptr, ptr, i64, i64, i64, i64, i32, f32, f32, i32]
    lib.pixel_shuffle_cl.argtypes = [ptr, ptr, i64, i64, i64, i64, i32, f32, f32, i32]
    return lib


def available() -> bool:
    """True when the compiled kernels can run (built on first call; False without a compiler)."""
    global _lib, _tried
    if os.environ.get("ESTATE_EDIT_KERNELS", "1") == "0":
        return False
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except OSError as e:
            warnings.warn(f"core/kernels.py: the C kernels are unavailable ({e}); the photo path falls "
                          "back to PyTorch (slower, same result). Install gcc to get them.", stacklevel=2)
    return _lib is not None


def cpu_inference(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Can a C kernel take x in place of a PyTorch op: x on the CPU, no gradient wanted through x or
    `params`, the kernels built. The callers check their own dtypes and layouts."""
    return (x.device.type == "cpu" and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)))
            and available())


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x (B, 3, H, W) uint8 on the CPU as HWC (channels_last, 0) or planar (contiguous, 1)."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.device.type != "cpu":
        raise ValueError(f"core/kernels.py: expected (B, 3, H, W) uint8 on the CPU, got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, 0
    if x.is_contiguous():
        return x, 1
    return x.contiguous(memory_format=torch.channels_last), 0


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _output(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty_like(x)
    if out.shape != x.shape or out.dtype != torch.uint8 or out.stride() != x.stride():
        raise ValueError(f"core/kernels.py: out {tuple(out.shape)} strides {out.stride()} must match the "
                         f"input {tuple(x.shape)} strides {x.stride()} (make it with torch.empty_like)")
    return out


def affine_grid_u8(x: torch.Tensor, grid: torch.Tensor, j0: torch.Tensor, j1: torch.Tensor, fy: torch.Tensor,
                   i0: torch.Tensor, fx: torch.Tensor, out: torch.Tensor | None = None,
                   poly: torch.Tensor | None = None, curves: torch.Tensor | None = None,
                   fixed: bool | None = None, half: bool | None = None) -> torch.Tensor:
    """x (B, 3, H, W) uint8; grid (B, G_h, G_w, 12) float32 [A | b], b in units of 255; the row and
    column interpolation tables (int32 cells, float32 weights). Returns uint8 in x's layout (into
    `out` when given: a reused buffer saves the page faults of a fresh 72 MB one at 24 MP).
    What runs on each pixel first, in the same pass (at most one of):
    `curves`: (4, 3) a cubic tone curve per channel on levels, out_c = sum_j curves[j, c] p_c^j
    clamped to 0..255 (core.prior.ToneCurves.kernel_args);
    `poly`: (20, 3) the cubic coefficients of the colour prior itself (core/prior.py).
    `fixed`: None = the 16-bit path where it applies (fixed_point_ok; never with `poly`), False = float.
    `half`: in the 16-bit path, None = float16 arithmetic where the CPU has it (AVX512-FP16: half the
    instructions, within one level of the float path like the fixed point), False = fixed point."""
    x, planar = _layout(x)
    out = _output(x, out)
    b, _, h, w = x.shape
    grid, tables = grid.float().contiguous(), [t.contiguous() for t in (j0, j1, fy, i0, fx)]
    if curves is not None and poly is not None:
        raise ValueError("core/kernels.py: pass curves or poly, not both")
    kind, pre, lut = 0, None, None
    for k, (name, coeffs, shape) in enumerate((("curves", curves, (4, 3)), ("poly", poly, (20, 3))), 1):
        if coeffs is not None:
            pre = coeffs.detach().to("cpu", torch.float32).contiguous()
            if pre.shape != shape:
                raise ValueError(f"core/kernels.py: {name} has shape {tuple(pre.shape)}; expected {shape}")
            kind = k
    mode = int(poly is None and fixed is not False and fixed_point_ok(grid))  # 0 float, 1 fixed point, 2 float16
    if mode and half is not False and _lib.has_fixed_point() == 2:
        mode = 2
    if mode and curves is not None:
        lut = curve_tables(curves, half=mode == 2)
    _lib.affine_grid_u8(_ptr(x), _ptr(out), b, h, w, planar, _ptr(grid), grid.shape[1], grid.shape[2],
                        *map(_ptr, tables), kind, None if pre is None else _ptr(pre),
                        None if lut is None else _ptr(lut), mode, torch.get_num_threads())
    return out


def prior_planes(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """The colour prior (core/prior.py) on x (B, 3, H, W) float in [0, 1] on the CPU: clamp(sum_t m_t(x)
    coeffs[t], 0, 1) with m the 20 monomials of core.prior.MONOMIALS, coeffs (20, 3); one C pass."""
    k = coeffs.detach().to("cpu", torch.float32).contiguous()
    if k.shape != (20, 3):
        raise ValueError(f"core/kernels.py: prior coefficients of shape {tuple(k.shape)}; expected (20, 3)")
    x = x.float().contiguous()
    out = torch.empty_like(x)
    _lib.prior_planes(_ptr(x), _ptr(out), x.shape[0], x.shape[-2] * x.shape[-1], _ptr(k), torch.get_num_threads())
    return out


def pixel_unshuffle_cl(x: torch.Tensor, f: int, scale: float, shift: float) -> torch.Tensor:
    """F.pixel_unshuffle(x * scale + shift, f) for a contiguous float32 (N, C, H, W) on the CPU, written
    straight into channels_last memory (the networks' layout) in one C pass; H and W multiples of f."""
    n, c, h, w = x.shape
    z = torch.empty(n, h // f, w // f, c * f * f, dtype=torch.float32)
    _lib.pixel_unshuffle_cl(_ptr(x), _ptr(z), n, c, h, w, f, scale, shift, torch.get_num_threads())
    return z.permute(0, 3, 1, 2)


def pixel_shuffle_cl(z: torch.Tensor, f: int, scale: float, shift: float) -> torch.Tensor:
    """F.pixel_shuffle(z, f) * scale + shift for channels_last float32 latents (N, C f f, h, w) on the
    CPU: a contiguous (N, C, h f, w f) image in one C pass."""
    n, cff, hf, wf = z.shape
    x = torch.empty(n, cff // (f * f), hf * f, wf * f, dtype=torch.float32)
    _lib.pixel_shuffle_cl(_ptr(z), _ptr(x), n, cff // (f * f), hf * f, wf * f, f, scale, shift,
                          torch.get_num_threads())
    return x


def group_norm_nhwc(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """F.group_norm for a channels_last float32 (N, C, H, W) on the CPU (no autograd), in one C call; the
    result is channels_last too."""
    if (x.dtype != torch.float32 or x.ndim != 4 or x.device.type != "cpu" or x.shape[1] % groups
            or not x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"core/kernels.py: group_norm_nhwc takes a channels_last float32 (N, C, H, W) on the "
                         f"CPU with C divisible by {groups}; got {x.dtype} {tuple(x.shape)}")
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    weight, bias = weight.detach().float().contiguous(), bias.detach().float().contiguous()
    _lib.group_norm_nhwc(_ptr(x), _ptr(out), n, h * w, c, groups, _ptr(weight), _ptr(bias), eps,
                         torch.get_num_threads())
    return out


def box_reduce_u8(x: torch.Tensor, k: int, reuse: bool = False) -> torch.Tensor:
    """x (B, 3, H, W) uint8 (HWC view or planar) -> (B, 3, ceil(H / k), ceil(W / k)) float32 in levels
    0..255: the mean of each k x k block (the partial blocks at the right and bottom edges: the mean of
    the pixels they have). One read of the photo; the working copy's first step at large sizes.
    `reuse`: written into this thread's kept buffer (valid until its next such call), not fresh memory:
    the 6-12 MB of a 24 MP photo's reduction cost ~1-3 ms of page faults each time."""
    if not 1 <= k <= 255:
        raise ValueError(f"core/kernels.py: box factor k={k}; expected 1..255 (sums are 16-bit)")
    x, planar = _layout(x)
    b, _, h, w = x.shape
    shape = (b, 3, -(-h // k), -(-w // k))
    out = (_scratch(math.prod(shape), torch.float32, "box").view(shape) if reuse
           else torch.empty(shape, dtype=torch.float32))
    _lib.box_reduce_u8(_ptr(x), _ptr(out), b, h, w, planar, k, torch.get_num_threads())
    return out


def _aa_filter(x: np.ndarray, mode: str) -> np.ndarray:
    """torch's antialiasing filters: bicubic (a = -0.5, as Pillow) or bilinear (the triangle)."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.clip(1 - x, 0, None)
    a = -0.5
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@functools.lru_cache(maxsize=64)
def aa_weights(n_in: int, n_out: int, scale: float, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The weights of torch's antialiased downscale along one axis (F.interpolate, antialias=True,
    align_corners=False, scale_factor = 1 / scale): output i reads inputs first[i] .. first[i] + count[i] - 1
    with weights[i, :count[i]] (normalised to sum 1). Returns (first int32, count int32, weights (n_out, k)
    float32); as torch computes them, so resample_planes equals F.interpolate to float rounding."""
    support = (2.0 if mode == "bicubic" else 1.0) * max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (np.arange(n_out) + 0.5)
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), n_in) - first
    k = int(count.max())
    taps = np.arange(k)
    w = _aa_filter((taps[None, :] + first[:, None] - centre[:, None] + 0.5) * invscale, mode)
    w = np.where(taps[None, :] < count[:, None], w, 0.0)
    w /= w.sum(1, keepdims=True)
    return (torch.from_numpy(first.astype(np.int32)), torch.from_numpy(count.astype(np.int32)),
            torch.from_numpy(w.astype(np.float32)).contiguous())


def resample_aa(x: torch.Tensor, scale: tuple[float, float], size: tuple[int, int],
                mode: str = "bicubic") -> torch.Tensor:
    """x (B, C, H, W) float on the CPU -> (B, C, h, w) for size (h, w): torch's antialiased downscale
    with scale_factor = `scale` (F.interpolate(x, scale_factor=scale, mode=mode, antialias=True,
    recompute_scale_factor=False)[..., :h, :w]) as one separable C pass."""
    x = x.float().contiguous()
    b, c, h, w = x.shape
    ho, wo = size
    ys, xs = aa_weights(h, ho, 1.0 / scale[0], mode), aa_weights(w, wo, 1.0 / scale[1], mode)
    out = torch.empty(b, c, ho, wo, dtype=torch.float32)
    _lib.resample_planes(_ptr(x), _ptr(out), b * c, h, w, ho, wo, *map(_ptr, ys), ys[2].shape[1],
                         *map(_ptr, xs), xs[2].shape[1], torch.get_num_threads())
    return out


def grid_moments(x: torch.Tensor, y: torch.Tensor, gh: int, gw: int, rows: tuple, cols: tuple) -> torch.Tensor:
    """The grid fit's tent-weighted moments in one pass: x, y (B, 3, h, w) float; rows (j0, j1, fy) and
    cols (i0, i1, fx), each pixel's two cells and the upper one's weight. Returns (B, gh, gw, 28)
    float64: sum [x 1][x 1]^T (16) and [x 1] y^T (12) per cell (core/transfer.py fit_affine_grid)."""
    x, y = x.float().contiguous(), y.float().contiguous()
    b, _, h, w = x.shape
    stats = torch.zeros(b, gh, gw, 28, dtype=torch.float64)
    (j0, j1, fy), (i0, i1, fx) = rows, cols
    tables = [t.contiguous() for t in (j0.int(), j1.int(), fy.double(), i0.int(), i1.int(), fx.double())]
    _lib.grid_moments(_ptr(x), _ptr(y), b, h, w, gh, gw, *map(_ptr, tables), _ptr(stats),
                      torch.get_num_threads())
    return stats


def ridge_grid(stats: torch.Tensor, eps: float) -> torch.Tensor:
    """The grid fit's solves from grid_moments' (B, gh, gw, 28) float64 moments: (B, gh, gw, 3, 4) float32
    [A | b], as core.transfer._ridge_solve twice (global, then each cell toward it), in one C call."""
    stats = stats.double().contiguous()
    b, gh, gw, _ = stats.shape
    out = torch.empty(b, gh, gw, 3, 4, dtype=torch.float32)
    _lib.ridge_grid(_ptr(stats), b, gh * gw, float(eps), _ptr(out), torch.get_num_threads())
    return out


FIXED_POINT_RANGE = 1000.0  # levels: the 16-bit path's sums stay within +-32000/16 for grids inside it


def fixed_point_ok(grid: torch.Tensor) -> bool:
    """Can the 16-bit path apply this (B, G_h, G_w, 12) grid? It can when the build has it
    (AVX-512 BW + VBMI) and no cell's output can leave +-FIXED_POINT_RANGE levels (sum |A| * 255 + |b|
    per channel: an edit maps 0..255 to about 0..255, so only a broken grid falls back to float)."""
    if not _lib.has_fixed_point():
        return False
    cells = np.abs(grid.detach().cpu().numpy().reshape(-1, 3, 4))  # numpy: microseconds on a few hundred cells
    bound = cells[..., :3].sum(-1) * 255 + cells[..., 3]
    return bool(np.isfinite(bound).all()) and float(bound.max()) <= FIXED_POINT_RANGE


def curve_tables(curves: torch.Tensor, half: bool = False) -> torch.Tensor:
    """(4, 3) tone-curve coefficients on levels -> (3, 256) int16: each channel's curve at the 256 levels,
    clamped to 0..255, in 1/128 of a level (fixed point) or minus 128 as float16 bits (`half`); the 16-bit path
    looks pixels up in it. Kept per curve: the photos of a batch share it (read only)."""
    return _curve_tables(tuple(curves.detach().to("cpu", torch.float64).flatten().tolist()), half)


@functools.lru_cache(maxsize=8)
def _curve_tables(coeffs: tuple, half: bool) -> torch.Tensor:
    v = torch.arange(256, dtype=torch.float64)[:, None]
    c = torch.tensor(coeffs, dtype=torch.float64).reshape(4, 3)
    out = (c[0] + c[1] * v + c[2] * v ** 2 + c[3] * v ** 3).clamp(0, 255)     # (256, 3)
    table = (out - 128).to(torch.float16).view(torch.int16) if half else (out * 128).round().to(torch.int16)
    return table.T.contiguous()


_local = threading.local()


def _scratch(n: int, dtype: torch.dtype = torch.int32, name: str = "scratch") -> torch.Tensor:
    """A buffer of n values, kept per thread (and per `name`) between calls: a fresh 8.7 MB one would be
    mapped and page-faulted in again on every photo."""
    buf = getattr(_local, name, None)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        buf = torch.empty(n, dtype=dtype)
        setattr(_local, name, buf)
    return buf[:n]


def lut_levels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the 256 uint8 levels fall on a LUT axis of `size` entries (align_corners=True, as
    grid_sample): the cell (int64, at most size - 2) and the weight of its upper neighbour (float32)."""
    pos = torch.arange(256, dtype=torch.float64) * (size - 1) / 255
    idx = pos.floor().clamp(max=size - 2)
    return idx.long(), (pos - idx).float()


def lut3d_u8(x: torch.Tensor, lut: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, 3, H, W) uint8 through per-image trilinear LUTs lut (B, 3, S, S, S) (outputs in [0, 1],
    indexed [channel][blue][green][red], as grid_sample reads them). Returns uint8 (into `out`).
    With AVX-512, image by image: the LUT interpolated along red and blue at every pair of their 256
    levels, packed in one C pass (pack_lut: 256 x 256 x S words of 32-bit fixed point, 8.7 MB at S = 33,
    each within 0.19 of a level; entries clamped to -64..320 levels, which changes no output unless the
    LUT maps that far outside 0..255); then one 64-bit gather a pixel brings its two green neighbours,
    interpolated in 16-bit lanes, 32 pixels at a time.
    Otherwise the LUT interpolated at the 256 red levels in float and a plain C loop."""
    x, planar = _layout(x)
    out = _output(x, out)
    b, _, h, w = x.shape
    s = lut.shape[-1]
    if lut.shape != (b, 3, s, s, s):
        raise ValueError(f"core/kernels.py: lut has shape {tuple(lut.shape)}; expected ({b}, 3, S, S, S)")
    idx, frac = lut_levels(s)
    idx = idx.int()  # kept in names: a temporary's memory could be freed before the call reads it
    levels = (lut.detach().to("cpu", torch.float32) * 255).contiguous()
    if _lib.has_fixed_point():
        table, packed = None, _scratch(256 * 256 * s)  # one image's table at a time
    else:
        packed = None
        red = torch.lerp(levels[..., idx], levels[..., idx + 1], frac)               # (B, 3, S_b, S_g, 256)
        table = red.permute(0, 4, 3, 2, 1).contiguous()                              # (B, 256, S_g, S_b, 3)
    _lib.lut3d_u8(_ptr(x), _ptr(out), b, h, w, planar, None if table is None else _ptr(table), s,
                  _ptr(idx), _ptr(frac), _ptr(levels), None if packed is None else _ptr(packed),
                  torch.get_num_threads())
    return out
