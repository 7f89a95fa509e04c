"""The two per-pixel loops of the photo path at full resolution, as small C kernels on uint8.

    from core import kernels
    if kernels.available():                       # compiled once per machine, then cached
        kernels.affine_grid_u8(x, grid, ...)      # core/transfer.py: apply_affine_grid_u8 (a prior first)
        kernels.lut3d_u8(x, table, ...)           # lut/model.py: apply_lut on uint8 photos

Why C: at 24 MP each of these loops does 20-30 float operations per pixel. In eager PyTorch
every operation is a pass over memory (the affine grid cost 280 ms, the LUT's grid_sample 1.2 s);
one fused loop that reads each uint8 pixel once, keeps the row in cache and writes uint8 once
runs within a few times a memory copy. gcc vectorises the loops (-O3 -march=native) and OpenMP
spreads the rows over torch's threads. The library is built with the system C compiler on first
use (well under a second) into ~/.cache/estate-edit/kernels (ESTATE_EDIT_CACHE moves it); with
no compiler, or ESTATE_EDIT_KERNELS=0, `available()` is False and callers use their PyTorch path
(the same result within one level of 255; tests/test_speed_path.py checks both).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

static inline float clamp255(float v) { v = v < 0.f ? 0.f : v; return v > 255.f ? 255.f : v; }

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

/* The colour prior (core/prior.py) on a row, in place: out_c = clamp(sum_k m_k(r, g, b) * k[3 k + c], 0, 1)
   with r, g, b in [0, 1] and m the 20 monomials of degree <= 3 in core.prior.MONOMIALS' order.
   Pixels in and out in levels 0..255 (the grid's units). */
static void poly_row(float* restrict R, float* restrict G, float* restrict B, int64_t w, const float* restrict k) {
    float k0[20], k1[20], k2[20];  /* per channel, so the loop below is straight-line code gcc vectorises */
    for (int t = 0; t < 20; t++) { k0[t] = k[3 * t]; k1[t] = k[3 * t + 1]; k2[t] = k[3 * t + 2]; }
    const float s = 1.f / 255.f;
    /* the 19 monomials once per pixel (16 products), then one multiply-add per term and channel */
#define POLY(K) (K[0] + K[1] * r + K[2] * g + K[3] * b + K[4] * rr + K[5] * rg + K[6] * rb + K[7] * gg \
                 + K[8] * gb + K[9] * bb + K[10] * rrr + K[11] * rrg + K[12] * rrb + K[13] * rgg \
                 + K[14] * rgb + K[15] * rbb + K[16] * ggg + K[17] * ggb + K[18] * gbb + K[19] * bbb)
    for (int64_t i = 0; i < w; i++) {
        float r = R[i] * s, g = G[i] * s, b = B[i] * s;
        float rr = r * r, rg = r * g, rb = r * b, gg = g * g, gb = g * b, bb = b * b;
        float rrr = rr * r, rrg = rr * g, rrb = rr * b, rgg = r * gg, rgb = r * gb, rbb = r * bb;
        float ggg = gg * g, ggb = gg * b, gbb = g * bb, bbb = bb * b;
        float o0 = POLY(k0), o1 = POLY(k1), o2 = POLY(k2);
        o0 = o0 < 0.f ? 0.f : o0; o1 = o1 < 0.f ? 0.f : o1; o2 = o2 < 0.f ? 0.f : o2;
        R[i] = (o0 > 1.f ? 1.f : o0) * 255.f;
        G[i] = (o1 > 1.f ? 1.f : o1) * 255.f;
        B[i] = (o2 > 1.f ? 1.f : o2) * 255.f;
    }
#undef POLY
}

/* x, out: nimg images of h x w RGB uint8, HWC (planar = 0) or CHW (planar = 1).
   grid: (nimg, gh, gw, 12) float [A | b] in units of 255: out = A @ rgb + b.
   Rows read grid rows j0, j1 with weight fy; pixels read cells i0, i0 + 1 with weight fx.
   poly: NULL, or the (20, 3) coefficients of a colour prior applied to each pixel before the grid. */
void affine_grid_u8(const uint8_t* x, uint8_t* out, int64_t nimg, int64_t h, int64_t w, int planar,
                    const float* grid, int gh, int gw, const int32_t* j0, const int32_t* j1,
                    const float* fy, const int32_t* i0, const float* fx, const float* poly, int nthreads) {
    init_masks();
    #pragma omp parallel num_threads(nthreads)
    {
        float* buf = malloc(sizeof(float) * (gw * 12 + 3 * w + 48));
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
            load_row(x + offset, cs, R, G, B, w);
            if (poly) poly_row(R, G, B, w, poly);
            for (int64_t xs = 0; xs < w;) {
                int c = i0[xs], c1 = i0[xs] + 1 < gw ? i0[xs] + 1 : i0[xs];
                int64_t xe = xs;
                while (xe < w && i0[xe] == c) xe++;
                float a[12], d[12];
                for (int k = 0; k < 12; k++) { a[k] = row[c * 12 + k]; d[k] = row[c1 * 12 + k] - a[k]; }
                span(R + xs, G + xs, B + xs, xe - xs, a, d, fx + xs);
                xs = xe;
            }
            store_row(out + offset, cs, R, G, B, w);
        }
        free(buf);
    }
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

void lut3d_u8(const uint8_t* x, uint8_t* out, int64_t nimg, int64_t h, int64_t w, int planar,
              const float* table, int s, const int32_t* idx, const float* frac, int nthreads) {
    int64_t cs = planar ? h * w : 1, ps = planar ? 1 : 3;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t by = 0; by < nimg * h; by++) {
        int64_t bi = by / h, y = by % h;
        int64_t offset = planar ? bi * 3 * h * w + y * w : (bi * h + y) * w * 3;
        if (planar) lut_row(x + offset, out + offset, w, 1, cs, table + bi * 256 * s * s * 3, s, idx, frac);
        else lut_row(x + offset, out + offset, w, 3, 1, table + bi * 256 * s * s * 3, s, idx, frac);
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
    lib.affine_grid_u8.argtypes = [ptr, ptr, i64, i64, i64, i32, ptr, i32, i32, ptr, ptr, ptr, ptr, ptr, ptr, i32]
    lib.lut3d_u8.argtypes = [ptr, ptr, i64, i64, i64, i32, ptr, i32, ptr, ptr, i32]
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
                   poly: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, 3, H, W) uint8; grid (B, G_h, G_w, 12) float32 [A | b], b in units of 255; the row and
    column interpolation tables (int32 cells, float32 weights). Returns uint8 in x's layout (into
    `out` when given: a reused buffer saves the page faults of a fresh 72 MB one at 24 MP).
    `poly`: (20, 3) cubic coefficients of a colour prior (core/prior.py) applied to each pixel
    first, in the same pass: out = grid(prior(x))."""
    x, planar = _layout(x)
    out = _output(x, out)
    b, _, h, w = x.shape
    grid, tables = grid.float().contiguous(), [t.contiguous() for t in (j0, j1, fy, i0, fx)]
    if poly is not None:
        poly = poly.detach().to("cpu", torch.float32).contiguous()
        if poly.shape != (20, 3):
            raise ValueError(f"core/kernels.py: poly has shape {tuple(poly.shape)}; expected (20, 3)")
    _lib.affine_grid_u8(_ptr(x), _ptr(out), b, h, w, planar, _ptr(grid), grid.shape[1], grid.shape[2],
                        *map(_ptr, tables), None if poly is None else _ptr(poly), torch.get_num_threads())
    return out


def lut3d_u8(x: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, frac: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, 3, H, W) uint8; table (B, 256, S, S, 3) float32 (the LUT at every red level, then green,
    blue, channel, in units of 255); idx (256,) int32, frac (256,) float32. Returns uint8 (into `out`)."""
    x, planar = _layout(x)
    out = _output(x, out)
    b, _, h, w = x.shape
    table = table.float().contiguous()
    _lib.lut3d_u8(_ptr(x), _ptr(out), b, h, w, planar, _ptr(table), table.shape[2], _ptr(idx.contiguous()),
                  _ptr(frac.contiguous()), torch.get_num_threads())
    return out
