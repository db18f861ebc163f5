// Study, not a product kernel: sparse forward and backward whose work is proportional to the
// active small kernels, for the density figure of the CUDA op (kernels/README.md, "Density: the
// open figure"). bench/sparse_tile_study.py compiles this file with NVRTC, checks it against the
// PyTorch oracle and times it against the default op.
//
// Per (channel, block of P images) and per active kernel j, one at a time:
//   forward:  the response Z_j (a k x k correlation, fp32) is computed once per pixel and stored
//             twice, row-major ("V plane") and transposed ("H plane"), each with zero rows around
//             it; a thread then adds N_rep shifted copies of it into each of its 4 x 4 output
//             tiles with aligned 16-byte loads only (vertical shifts move rows of the V plane,
//             horizontal shifts rows of the H plane), and idc_j copies into its identity tile.
//   backward: the same gathers over the staged output gradients (gV row-major, gH transposed)
//             give the gradient of Z_j for a 4 x 4 tile; it feeds the weight gradient (a k x k
//             correlation with x, reduced in a fixed order) and, through shared memory, grad_x
//             (a k x k convolution accumulated in registers over all kernels).
//   study_sp_mma_fwd (bf16): the forward with the gathers on the tensor cores (end of the file).
// No atomics; every sum has a fixed order.
//
// Compile-time parameters (-D): DT storage dtype (0 float32, 1 float16, 2 bfloat16; fp32
// accumulation), KS small kernel size (odd, <= 5), MAXT launch bound, MINB min blocks per SM.
// Header-free: the fp16 / bf16 conversions are written out.

#ifndef DT
#define DT 0
#endif
#ifndef KS
#define KS 3
#endif
#ifndef MAXT
#define MAXT 256
#endif
#ifndef MINB
#define MINB 2
#endif

#define RS (KS / 2)
#define KK (KS * KS)
#define WS ((KK + 3) & ~3)  // staged floats per small kernel (16-byte rows)
#define XW (4 + 2 * RS)  // rows / cols of the input window of a 4 x 4 tile
#define SKIP 0x7fffffff  // table entry of a shift that reads no non-zero row of its plane

#if RS > 2
#error "the study needs KS <= 5 (4 zero columns left of each staged plane)"
#endif

#if DT == 0
typedef float io_t;
__device__ __forceinline__ float ld_io(const io_t* p, long long i) { return p[i]; }
__device__ __forceinline__ void st_io(io_t* p, long long i, float v) { p[i] = v; }
#elif DT == 1
typedef unsigned short io_t;
__device__ __forceinline__ float ld_io(const io_t* p, long long i) {
    const unsigned short h = p[i];
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ void st_io(io_t* p, long long i, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i] = h;
}
#elif DT == 2
typedef unsigned short io_t;
__device__ __forceinline__ float ld_io(const io_t* p, long long i) { return __uint_as_float(((unsigned)p[i]) << 16); }
__device__ __forceinline__ void st_io(io_t* p, long long i, float v) {
    const unsigned u = __float_as_uint(v);
    unsigned short h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h = (unsigned short)((u >> 16) | 0x0040u);  // quiet NaN, sign kept
    } else {
        h = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
    }
    p[i] = h;
}
#else
#error "DT must be 0 (f32), 1 (f16) or 2 (bf16)"
#endif

// Geometry of one launch (all in 4-byte words). Hp, Wp: H, W rounded up to 4 (tiles of 4 x 4).
//   x plane:  (y, x) at (y + 2RS) * XP + x + 4, y in [-2RS, Hp + 2RS), x in [-4, Wp + 4)
//   V plane:  (row, col) at (row + LOV) * PV + col, LOV + rows in [0, RV), col in [0, PV)
//   H plane:  (col, row) at (col + LOH) * PH + row (transposed), LOH + col in [0, RH)
//   gZ plane (backward): (y, x) at (y + RS) * XP + x + 4, y in [-RS, Hp + RS)
// The host (bench/sparse_tile_study.py, geometry) sizes LOV / RV / LOH / RH so that every shift the tables
// keep stays inside its plane.
struct Geo {
    int Hp, Wp, nTH, nTW, nT, PV, PH, XP, XPL, VPL, HPL, GPL, nHR, nHC, nHalo;
};

__device__ __forceinline__ Geo geometry(int H, int W, int RV, int RH) {
    Geo g;
    g.Hp = (H + 3) & ~3;
    g.Wp = (W + 3) & ~3;
    g.nTH = g.Hp >> 2;
    g.nTW = g.Wp >> 2;
    g.nT = g.nTH * g.nTW;
    g.PV = (g.Wp + 7) & ~7;
    g.PH = (g.Hp + 7) & ~7;
    g.XP = g.Wp + 8;
    g.XPL = (g.Hp + 4 * RS) * g.XP;
    g.VPL = RV * g.PV;
    g.HPL = RH * g.PH;
    g.GPL = (g.Hp + 2 * RS) * g.XP;
    // halo rows [-RS, 0) and [Hp, H + RS); halo columns likewise
    g.nHR = RS + max(0, H + RS - g.Hp);
    g.nHC = RS + max(0, W + RS - g.Wp);
    g.nHalo = g.nHR * g.nTW + g.nHC * g.nTH;
    return g;
}

// Warp 0 compacts the active kernels of channel c (ballot + popc: ascending order). The caller
// syncs before reading s_list / s_n.
__device__ __forceinline__ void compact_active(int c, int nk, const unsigned char* __restrict__ active, int* s_list,
                                               int* s_n) {
    const int tid = threadIdx.x;
    if (tid < 32) {
        int n = 0;
        for (int base = 0; base < nk; base += 32) {
            const int j = base + tid;
            const bool a = j < nk && active[c * nk + j];
            const unsigned m = __ballot_sync(0xffffffffu, a);
            if (a) s_list[n + __popc(m & ((1u << tid) - 1u))] = j;
            n += __popc(m);
        }
        if (tid == 0) *s_n = n;
    }
}

__device__ __forceinline__ void zero_words(float* p, int n4) {
    float4* q = (float4*)p;
    for (int t = threadIdx.x; t < n4; t += blockDim.x) q[t] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// Weights (padded to WS floats per kernel) and shift tables of the n active kernels. A vertical
// shift dv moves plane rows by dv * pv elements (forward: +dv, backward: -dv), a horizontal one by
// dh * ph; a shift that cannot reach a non-zero row is SKIP. Forward: output rows [0, Hp) read
// response rows [-RS, H + RS). Backward: gradient rows [-RS, max(Hp, H + RS)) read rows [0, H).
__device__ __forceinline__ void stage_tables(bool backward, int c, int nk, int nrep, int n, const float* __restrict__ w,
                                             const int* __restrict__ offh, const int* __restrict__ offv,
                                             const int* __restrict__ idc, int H, int W, const Geo& g, int pv, int ph,
                                             float* s_w, int* s_tv, int* s_th, int* s_id, const int* s_list) {
    const int tid = threadIdx.x, NT = blockDim.x;
    for (int t = tid; t < n * WS; t += NT) {
        const int i = t / WS, e = t - i * WS;
        s_w[t] = e < KK ? w[(long long)(c * nk + s_list[i]) * KK + e] : 0.f;
    }
    for (int t = tid; t < n * nrep; t += NT) {
        const int i = t / nrep, gg = t - i * nrep;
        const long long src = (long long)(c * nk + s_list[i]) * nrep + gg;
        const int dv = offv[src], dh = offh[src];
        if (!backward) {
            s_tv[t] = (dv > H + RS - 1 || dv < -(g.Hp - 1 + RS)) ? SKIP : dv * pv;
            s_th[t] = (dh > W + RS - 1 || dh < -(g.Wp - 1 + RS)) ? SKIP : dh * ph;
        } else {
            const int eh = max(g.Hp, H + RS), ew = max(g.Wp, W + RS);
            s_tv[t] = (dv > eh - 1 || dv < -(H - 1 + RS)) ? SKIP : -dv * pv;
            s_th[t] = (dh > ew - 1 || dh < -(W - 1 + RS)) ? SKIP : -dh * ph;
        }
    }
    for (int t = tid; t < n; t += NT) s_id[t] = idc[c * nk + s_list[t]];
}

// Copies np planes of channel c into staged planes: element (y, x) of image p goes to
// dst[p * plane + (y + row0) * pitch + x + col0], or transposed to dst[p * plane + (x + row0) *
// pitch + y + col0]. A warp per image row, lanes along it (coalesced reads).
__device__ __forceinline__ void stage_planes(const io_t* __restrict__ src, float* dst, int b0, int np, int C, int c,
                                             int H, int W, int plane, int pitch, int row0, int col0,
                                             bool transpose) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const long long HW = (long long)H * W;
    for (int r = warp; r < np * H; r += nw) {
        const int p = r / H, y = r - p * H;
        const io_t* s = src + ((long long)(b0 + p) * C + c) * HW + (long long)y * W;
        float* d = dst + p * plane;
        for (int x = lane; x < W; x += 32) {
            const float v = ld_io(s, x);
            if (transpose)
                d[(x + row0) * pitch + y + col0] = v;
            else
                d[(y + row0) * pitch + x + col0] = v;
        }
    }
}

// A row of the input window: columns x0 - RS .. x0 + 3 + RS of the staged row at p (p points at
// column x0, 16-byte aligned).
__device__ __forceinline__ void load_row(const float* p, float (&v)[XW]) {
    const float4 m = *(const float4*)p;
#pragma unroll
    for (int e = 0; e < RS; ++e) {
        v[RS - 1 - e] = p[-1 - e];
        v[RS + 4 + e] = p[4 + e];
    }
    v[RS] = m.x;
    v[RS + 1] = m.y;
    v[RS + 2] = m.z;
    v[RS + 3] = m.w;
}

__device__ __forceinline__ void load_weights(const float* s, float (&wr)[KK]) {
    float t[WS];
#pragma unroll
    for (int e = 0; e < WS; e += 4) *(float4*)&t[e] = *(const float4*)(s + e);
#pragma unroll
    for (int e = 0; e < KK; ++e) wr[e] = t[e];
}

// Calls f(ri, ci, u, v, x[y0 + ri + u - RS][x0 + ci + v - RS]) for every pixel (ri, ci) of the 4 x 4
// tile and tap (u, v), reading the input window at xp (the staged element (y0 - RS, x0)) a row at a
// time.
template <class F>
__device__ __forceinline__ void for_window(const float* xp, int XP, F f) {
#pragma unroll
    for (int R = 0; R < XW; ++R) {
        float v[XW];
        load_row(xp + R * XP, v);
#pragma unroll
        for (int u = 0; u < KS; ++u) {
            const int ri = R - u;
            if (ri < 0 || ri > 3) continue;
#pragma unroll
            for (int ci = 0; ci < 4; ++ci)
#pragma unroll
                for (int vv = 0; vv < KS; ++vv) f(ri, ci, u, vv, v[ci + vv]);
        }
    }
}

// The tile's responses z[ri][ci] to the kernel wr.
__device__ __forceinline__ void tile_response(const float* xp, int XP, const float (&wr)[KK], float (&z)[4][4]) {
#pragma unroll
    for (int ri = 0; ri < 4; ++ri)
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) z[ri][ci] = 0.f;
    for_window(xp, XP, [&](int ri, int ci, int u, int vv, float xv) { z[ri][ci] += wr[u * KS + vv] * xv; });
}

// Adds the tile's weight gradient for the response gradient gz: pw[u][v] += sum gz[ri][ci] x[...].
__device__ __forceinline__ void tile_wgrad(const float* xp, int XP, const float (&gz)[4][4], float (&pw)[KK]) {
    for_window(xp, XP, [&](int ri, int ci, int u, int vv, float xv) { pw[u * KS + vv] += gz[ri][ci] * xv; });
}

// The input window of a halo strip (4 responses along a row or down a column): v[a][b] =
// xp[a * sa + (b - RS) * sb], a across the strip (KS), b along it (4 + 2 RS). Row strip: xp at
// staged (y - RS, x0), sa = XP, sb = 1; column strip: xp at (y0, x - RS), sa = 1, sb = XP.
__device__ __forceinline__ void strip_window(const float* xp, int sa, int sb, float (&v)[KS][XW]) {
#pragma unroll
    for (int a = 0; a < KS; ++a)
#pragma unroll
        for (int b = 0; b < XW; ++b) v[a][b] = xp[a * sa + (b - RS) * sb];
}

struct Halo {
    int p;       // image in the block
    bool row;    // row strip (V plane) or column strip (H plane)
    int line;    // the halo row (row strip) or column (column strip), image coordinates
    int first;   // first column (row strip) or row (column strip), a multiple of 4
};

__device__ __forceinline__ Halo halo_item(int h, const Geo& g) {
    Halo s;
    s.p = h / g.nHalo;
    int e = h - s.p * g.nHalo;
    s.row = e < g.nHR * g.nTW;
    if (s.row) {
        const int k = e / g.nTW;
        s.first = 4 * (e - k * g.nTW);
        s.line = k < RS ? k - RS : g.Hp + k - RS;
    } else {
        e -= g.nHR * g.nTW;
        const int k = e / g.nTH;
        s.first = 4 * (e - k * g.nTH);
        s.line = k < RS ? k - RS : g.Wp + k - RS;
    }
    return s;
}

// Window of a halo strip in the staged x plane of its image.
__device__ __forceinline__ const float* halo_window(const float* s_x, const Halo& s, const Geo& g, int& sa, int& sb) {
    const float* xp = s_x + s.p * g.XPL;
    if (s.row) {
        sa = g.XP;
        sb = 1;
        return xp + (s.line + RS) * g.XP + s.first + 4;  // staged row of image row line - RS
    }
    sa = 1;
    sb = g.XP;
    return xp + (s.first + 2 * RS) * g.XP + s.line - RS + 4;  // staged (first, line - RS)
}

// The 4 responses of halo strip s (image coordinates as in halo_item) of the kernel wr.
__device__ __forceinline__ void halo_response(const float* s_x, const Halo& s, const Geo& g, const float (&wr)[KK],
                                              float (&zs)[4]) {
    int sa, sb;
    const float* xp = halo_window(s_x, s, g, sa, sb);
    float v[KS][XW];
    strip_window(xp, sa, sb, v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        float acc = 0.f;
#pragma unroll
        for (int a = 0; a < KS; ++a)
#pragma unroll
            for (int bb = 0; bb < KS; ++bb) acc += (s.row ? wr[a * KS + bb] : wr[bb * KS + a]) * v[a][e + bb];
        zs[e] = acc;
    }
}

// Thread t's tiles (image p, tile row a, tile column b). Three orders over the same tiles, chosen
// so that the 8 threads of a quarter-warp touch 8 different 16-byte bank groups:
//   V tiles row-major (gathers move rows of the V plane), H tiles column-major (rows of the
//   transposed H plane), C tiles (responses, stored to both planes) along skewed diagonals.
__device__ __forceinline__ void tile_v(int q, const Geo& g, int& a, int& b) { a = q / g.nTW; b = q - a * g.nTW; }
__device__ __forceinline__ void tile_h(int q, const Geo& g, int& a, int& b) { b = q / g.nTH; a = q - b * g.nTH; }
__device__ __forceinline__ void tile_c(int q, const Geo& g, int& a, int& b) {
    const int row = q / g.nTW;
    b = q - row * g.nTW;
    a = (row + b) % g.nTH;
}

__device__ __forceinline__ void add4(float (&acc)[4], const float* p) {
    const float4 v = *(const float4*)p;
    acc[0] += v.x;
    acc[1] += v.y;
    acc[2] += v.z;
    acc[3] += v.w;
}

// Writes a 4 x 4 tile (acc[i][j]: row 4a + i, column 4b + j, or transposed) of image b into the
// (B, C, H, W) tensor, inside the image only.
__device__ __forceinline__ void store_tile(io_t* out, long long plane, int H, int W, int a, int b,
                                           const float (&acc)[4][4], bool transposed) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int y = 4 * a + i;
        if (y >= H) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int x = 4 * b + j;
            if (x < W) st_io(out, plane + (long long)y * W + x, transposed ? acc[j][i] : acc[i][j]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(MAXT, MINB)
swc_sp_fwd(const io_t* __restrict__ x, const float* __restrict__ w, const int* __restrict__ offh,
           const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
           io_t* __restrict__ out_h, io_t* __restrict__ out_v, io_t* __restrict__ out_i, int B, int C, int H, int W,
           int nk, int nrep, int P, int LOV, int RV, int LOH, int RH) {
    extern __shared__ __align__(16) float smem[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int tid = threadIdx.x, NT = blockDim.x;
    const Geo g = geometry(H, W, RV, RH);

    float* s_x = smem;
    float* s_zv = s_x + P * g.XPL;
    float* s_zh = s_zv + P * g.VPL;
    float* s_w = s_zh + P * g.HPL;
    int* s_tv = (int*)(s_w + nk * WS);
    int* s_th = s_tv + nk * nrep;
    int* s_id = s_th + nk * nrep;
    int* s_list = s_id + nk;

    compact_active(c, nk, active, s_list, &s_n);
    zero_words(s_x, P * (g.XPL + g.VPL + g.HPL) / 4);
    __syncthreads();
    const int n = s_n;
    stage_tables(false, c, nk, nrep, n, w, offh, offv, idc, H, W, g, g.PV, g.PH, s_w, s_tv, s_th, s_id, s_list);
    stage_planes(x, s_x, b0, np, C, c, H, W, g.XPL, g.XP, 2 * RS, 4, false);

    const bool own = tid < P * g.nT;
    const int p = own ? tid / g.nT : 0, q = tid - p * g.nT;
    int ac = 0, bc = 0, av = 0, bv = 0, ah = 0, bh = 0;
    if (own) {
        tile_c(q, g, ac, bc);
        tile_v(q, g, av, bv);
        tile_h(q, g, ah, bh);
    }
    const float* xc = s_x + p * g.XPL + (4 * ac + RS) * g.XP + 4 * bc + 4;
    float* zvc = s_zv + p * g.VPL + (4 * ac + LOV) * g.PV + 4 * bc;
    float* zhc = s_zh + p * g.HPL + (4 * bc + LOH) * g.PH + 4 * ac;
    const float* zvv = s_zv + p * g.VPL + (4 * av + LOV) * g.PV + 4 * bv;
    const float* zhh = s_zh + p * g.HPL + (4 * bh + LOH) * g.PH + 4 * ah;
    float aV[4][4], aH[4][4], aI[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) { aV[i][j] = 0.f; aH[i][j] = 0.f; aI[i][j] = 0.f; }
    __syncthreads();

    for (int i = 0; i < n; ++i) {
        float wr[KK];
        load_weights(s_w + i * WS, wr);
        if (own) {
            float z[4][4];
            tile_response(xc, g.XP, wr, z);
#pragma unroll
            for (int ri = 0; ri < 4; ++ri) *(float4*)(zvc + ri * g.PV) = make_float4(z[ri][0], z[ri][1], z[ri][2], z[ri][3]);
#pragma unroll
            for (int ci = 0; ci < 4; ++ci) *(float4*)(zhc + ci * g.PH) = make_float4(z[0][ci], z[1][ci], z[2][ci], z[3][ci]);
            const int ic = s_id[i];
            if (ic) {
                const float f = (float)ic;
#pragma unroll
                for (int ri = 0; ri < 4; ++ri)
#pragma unroll
                    for (int ci = 0; ci < 4; ++ci) aI[ri][ci] += f * z[ri][ci];
            }
        }
        for (int h = tid; h < P * g.nHalo; h += NT) {
            const Halo s = halo_item(h, g);
            float zs[4];
            halo_response(s_x, s, g, wr, zs);
            float* dst = s.row ? s_zv + s.p * g.VPL + (s.line + LOV) * g.PV + s.first
                               : s_zh + s.p * g.HPL + (s.line + LOH) * g.PH + s.first;
            *(float4*)dst = make_float4(zs[0], zs[1], zs[2], zs[3]);
        }
        __syncthreads();
        if (own) {
            for (int gg = 0; gg < nrep; ++gg) {
                const int ov = s_tv[i * nrep + gg], oh = s_th[i * nrep + gg];
                if (ov != SKIP) {
#pragma unroll
                    for (int ri = 0; ri < 4; ++ri) add4(aV[ri], zvv + ov + ri * g.PV);
                }
                if (oh != SKIP) {
#pragma unroll
                    for (int ci = 0; ci < 4; ++ci) add4(aH[ci], zhh + oh + ci * g.PH);
                }
            }
        }
        __syncthreads();
    }

    if (own && p < np) {
        const long long plane = ((long long)(b0 + p) * C + c) * H * W;
        store_tile(out_v, plane, H, W, av, bv, aV, false);
        store_tile(out_h, plane, H, W, ah, bh, aH, true);
        store_tile(out_i, plane, H, W, ac, bc, aI, false);
    }
}

// Backward: grad_x (written once per element) and per-block weight-gradient partials
// part[gridDim.y][C][nk][KK] (inactive kernels: 0), summed over blocks by the caller in order.
extern "C" __global__ void __launch_bounds__(MAXT, MINB)
swc_sp_bwd(const io_t* __restrict__ x, const io_t* __restrict__ g_h, const io_t* __restrict__ g_v,
           const io_t* __restrict__ g_i, const float* __restrict__ w, const int* __restrict__ offh,
           const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
           io_t* __restrict__ grad_x, float* __restrict__ part, int B, int C, int H, int W, int nk, int nrep, int P,
           int LOV, int RV, int LOH, int RH) {
    extern __shared__ __align__(16) float smem[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int tid = threadIdx.x, NT = blockDim.x, lane = tid & 31, warp = tid >> 5, NW = NT >> 5;
    const Geo g = geometry(H, W, RV, RH);

    float* s_x = smem;
    float* s_gv = s_x + P * g.XPL;
    float* s_gh = s_gv + P * g.VPL;
    float* s_g = s_gh + P * g.HPL;  // two buffers of P gZ planes
    float* s_w = s_g + 2 * P * g.GPL;
    float* s_pw = s_w + nk * WS;  // [n][NW][KK] per-warp weight-gradient sums
    int* s_tv = (int*)(s_pw + nk * NW * KK);
    int* s_th = s_tv + nk * nrep;
    int* s_id = s_th + nk * nrep;
    int* s_list = s_id + nk;

    compact_active(c, nk, active, s_list, &s_n);
    zero_words(s_x, P * (g.XPL + g.VPL + g.HPL + 2 * g.GPL) / 4);
    __syncthreads();
    const int n = s_n;
    stage_tables(true, c, nk, nrep, n, w, offh, offv, idc, H, W, g, g.PV, g.PH, s_w, s_tv, s_th, s_id, s_list);
    stage_planes(x, s_x, b0, np, C, c, H, W, g.XPL, g.XP, 2 * RS, 4, false);
    stage_planes(g_v, s_gv, b0, np, C, c, H, W, g.VPL, g.PV, LOV, 0, false);
    stage_planes(g_h, s_gh, b0, np, C, c, H, W, g.HPL, g.PH, LOH, 0, true);

    const bool own = tid < P * g.nT;
    const int p = own ? tid / g.nT : 0, q = tid - p * g.nT;
    int a = 0, b = 0;
    if (own) tile_c(q, g, a, b);
    const long long plane = ((long long)(b0 + min(p, np - 1)) * C + c) * H * W;
    float gi[4][4], gx[4][4];
#pragma unroll
    for (int ri = 0; ri < 4; ++ri)
#pragma unroll
        for (int ci = 0; ci < 4; ++ci) {
            const int y = 4 * a + ri, xx = 4 * b + ci;
            gi[ri][ci] = (own && p < np && y < H && xx < W) ? ld_io(g_i, plane + (long long)y * W + xx) : 0.f;
            gx[ri][ci] = 0.f;
        }
    const float* xc = s_x + p * g.XPL + (4 * a + RS) * g.XP + 4 * b + 4;
    const float* gvc = s_gv + p * g.VPL + (4 * a + LOV) * g.PV + 4 * b;
    const float* ghc = s_gh + p * g.HPL + (4 * b + LOH) * g.PH + 4 * a;
    const int gzc = p * g.GPL + (4 * a + RS) * g.XP + 4 * b + 4;  // gZ element (4a, 4b)
    __syncthreads();

    for (int i = 0; i < n; ++i) {
        float* s_gz = s_g + (i & 1) * P * g.GPL;
        float wr[KK], pw[KK];
        load_weights(s_w + i * WS, wr);
#pragma unroll
        for (int e = 0; e < KK; ++e) pw[e] = 0.f;
        if (own) {
            const float f = (float)s_id[i];
            float gz[4][4], gzt[4][4];
#pragma unroll
            for (int ri = 0; ri < 4; ++ri)
#pragma unroll
                for (int ci = 0; ci < 4; ++ci) { gz[ri][ci] = f * gi[ri][ci]; gzt[ci][ri] = 0.f; }
            for (int gg = 0; gg < nrep; ++gg) {
                const int ov = s_tv[i * nrep + gg], oh = s_th[i * nrep + gg];
                if (ov != SKIP) {
#pragma unroll
                    for (int ri = 0; ri < 4; ++ri) add4(gz[ri], gvc + ov + ri * g.PV);
                }
                if (oh != SKIP) {
#pragma unroll
                    for (int ci = 0; ci < 4; ++ci) add4(gzt[ci], ghc + oh + ci * g.PH);
                }
            }
#pragma unroll
            for (int ri = 0; ri < 4; ++ri)
#pragma unroll
                for (int ci = 0; ci < 4; ++ci) gz[ri][ci] += gzt[ci][ri];
            tile_wgrad(xc, g.XP, gz, pw);
#pragma unroll
            for (int ri = 0; ri < 4; ++ri)
                *(float4*)(s_gz + gzc + ri * g.XP) = make_float4(gz[ri][0], gz[ri][1], gz[ri][2], gz[ri][3]);
        }
        for (int h = tid; h < P * g.nHalo; h += NT) {
            const Halo s = halo_item(h, g);
            float zs[4] = {0.f, 0.f, 0.f, 0.f};
            // a halo row of gZ only receives vertical shifts, a halo column only horizontal ones
            const float* src = s.row ? s_gv + s.p * g.VPL + (s.line + LOV) * g.PV + s.first
                                     : s_gh + s.p * g.HPL + (s.line + LOH) * g.PH + s.first;
            const int* tab = (s.row ? s_tv : s_th) + i * nrep;
            for (int gg = 0; gg < nrep; ++gg) {
                const int o = tab[gg];
                if (o != SKIP) add4(zs, src + o);
            }
            int sa, sb;
            const float* xp = halo_window(s_x, s, g, sa, sb);
            float v[KS][XW];
            strip_window(xp, sa, sb, v);
#pragma unroll
            for (int a2 = 0; a2 < KS; ++a2)
#pragma unroll
                for (int bb = 0; bb < KS; ++bb) {
                    float acc = 0.f;
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc += zs[e] * v[a2][e + bb];
                    if (s.row)
                        pw[a2 * KS + bb] += acc;
                    else
                        pw[bb * KS + a2] += acc;
                }
            float* gp = s_gz + s.p * g.GPL;
            if (s.row) {
                *(float4*)(gp + (s.line + RS) * g.XP + s.first + 4) = make_float4(zs[0], zs[1], zs[2], zs[3]);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) gp[(s.first + e + RS) * g.XP + s.line + 4] = zs[e];
            }
        }
        __syncthreads();
        if (own) {
            // grad_x[y][x] += sum_{u,v} w[u][v] gZ[y - u + RS][x - v + RS]: window rows 4a - RS ..
            const float* gp = s_gz + gzc - RS * g.XP;
#pragma unroll
            for (int R = 0; R < XW; ++R) {
                float v[XW];
                load_row(gp + R * g.XP, v);
#pragma unroll
                for (int u = 0; u < KS; ++u) {
                    const int ri = R + u - 2 * RS;
                    if (ri < 0 || ri > 3) continue;
#pragma unroll
                    for (int ci = 0; ci < 4; ++ci)
#pragma unroll
                        for (int vv = 0; vv < KS; ++vv) gx[ri][ci] += wr[u * KS + vv] * v[ci + 2 * RS - vv];
                }
            }
        }
        // weight gradient of kernel i: butterfly over the warp, then one row per warp
#pragma unroll
        for (int e = 0; e < KK; ++e) {
            float t = pw[e];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
            pw[e] = t;
        }
        if (lane == 0) {
#pragma unroll
            for (int e = 0; e < KK; ++e) s_pw[(i * NW + warp) * KK + e] = pw[e];
        }
    }

    if (own && p < np) store_tile(grad_x, ((long long)(b0 + p) * C + c) * H * W, H, W, a, b, gx, false);
    __syncthreads();
    float* dst = part + ((long long)blockIdx.y * C + c) * nk * KK;
    for (int t = tid; t < nk * KK; t += NT) {
        const int j = t / KK, e = t - j * KK;
        int i = -1;
        for (int k2 = 0; k2 < n; ++k2) i = s_list[k2] == j ? k2 : i;
        float sum = 0.f;
        if (i >= 0)
            for (int ww = 0; ww < NW; ++ww) sum += s_pw[(i * NW + ww) * KK + e];
        dst[t] = sum;
    }
}

// ------------------------------------------------------------------------------------------------
// study_sp_mma_fwd (bf16): the responses are computed as above but stored as bf16 in both planes. A
// shifted copy of a 16-line x 8-column block of a plane is added into fp32 accumulators by one
// mma.m16n8k16 whose A operand is the identity: D += I * B, with B loaded by ldmatrix.trans from
// 16 arbitrary plane rows (the lines moved by the shift). A warp owns 16 output lines (rows for the
// vertical branch and the identity, columns for the horizontal branch, read from the transposed
// plane) across the block's images.
#if DT == 2

typedef unsigned short u16;
typedef unsigned u32;

__device__ __forceinline__ u32 bf16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x2_t(u32 addr, u32& r0, u32& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], u32 a0, u32 a3, u32 b0, u32 b1) {
    // A = [[a0, 0], [0, a3]] in fragments: a diagonal matrix (a1 = a2 = 0)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %5, %6}, {%7, %8}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(0u), "r"(a3), "r"(b0), "r"(b1));
}

#define MAXNT 8  // n-tiles of 8 columns per line: planes up to 64 wide

// Adds the shifted 16 x (8 nt) block at base + shift (bytes) into acc: A = diag(a).
__device__ __forceinline__ void mma_gather(float (&acc)[MAXNT][4], u32 base, int nt, u32 a) {
#pragma unroll
    for (int q = 0; q < MAXNT / 2; ++q) {
        if (2 * q >= nt) break;
        u32 b0, b1, b2, b3;
        if (2 * q + 1 < nt) {
            ldsm_x4_t(base + 32 * q, b0, b1, b2, b3);
            mma_bf16(acc[2 * q], a, a, b0, b1);
            mma_bf16(acc[2 * q + 1], a, a, b2, b3);
        } else {
            ldsm_x2_t(base + 32 * q, b0, b1);
            mma_bf16(acc[2 * q], a, a, b0, b1);
        }
    }
}

// Stores an accumulator block: line m0 + g (+8), column 8 nt + 2t (+1) -> element (line, col) of
// the block's images; lines are (image, row) with rows of n_in per image; transposed: (image,
// column) and the column index is the image row.
__device__ __forceinline__ void store_lines(io_t* out, const float (&acc)[MAXNT][4], int m0, int nlines, int n_in,
                                            int ncol, int nt, int b0, int np, int C, int c, int H, int W,
                                            bool transposed) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int line = m0 + g + 8 * half;
        if (line >= nlines) continue;
        const int p = line / n_in, l = line - p * n_in;
        if (p >= np) continue;
        const long long plane = ((long long)(b0 + p) * C + c) * H * W;
#pragma unroll
        for (int n = 0; n < MAXNT; ++n) {
            if (n >= nt) break;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = 8 * n + 2 * t + e;
                if (col >= ncol) continue;
                const long long o = transposed ? plane + (long long)col * W + l : plane + (long long)l * W + col;
                st_io(out, o, acc[n][2 * half + e]);
            }
        }
    }
}

// Gather stripe number `warp`: 16 output lines of the V branch (lines = image rows, warps [0, nV)) or
// of the H branch (lines = image columns, the next nH warps) across the block's P images, and the
// lane's ldmatrix address in the V / H planes zv / zh (line m0 + lane % 16, clamped; column half).
struct GatherStripe {
    bool isV, isH;
    int m0, nlines, n_in;
    u32 base;
};

__device__ __forceinline__ GatherStripe gather_stripe(int warp, int P, int H, int W, const u16* zv, const u16* zh,
                                                      int VPLB, int HPLB, int LOV, int LOH, int PVB, int PHB) {
    const int lane = threadIdx.x & 31;
    const int nV = (P * H + 15) / 16, nH = (P * W + 15) / 16;
    GatherStripe gs;
    gs.isV = warp < nV;
    gs.isH = !gs.isV && warp < nV + nH;
    gs.m0 = 16 * (gs.isV ? warp : warp - nV);
    gs.nlines = gs.isV ? P * H : P * W;
    gs.n_in = gs.isV ? H : W;
    gs.base = 0;
    if (gs.isV || gs.isH) {
        const int line = min(gs.m0 + (lane & 15), gs.nlines - 1);
        const int pl = line / gs.n_in, l = line - pl * gs.n_in;
        const u16* row = gs.isV ? zv + pl * VPLB + (l + LOV) * PVB : zh + pl * HPLB + (l + LOH) * PHB;
        gs.base = smem_addr(row) + 16 * (lane >> 4);
    }
    return gs;
}

__device__ __forceinline__ void zero_tiles(float (&a)[MAXNT][4], float (&b)[MAXNT][4]) {
#pragma unroll
    for (int t = 0; t < MAXNT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            a[t][e] = 0.f;
            b[t][e] = 0.f;
        }
}

// PVB / PHB: element pitches of the bf16 V and H planes (8 * odd: conflict-free ldmatrix rows).
extern "C" __global__ void __launch_bounds__(512, 1)
study_sp_mma_fwd(const io_t* __restrict__ x, const float* __restrict__ w, const int* __restrict__ offh,
                 const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
                 io_t* __restrict__ out_h, io_t* __restrict__ out_v, io_t* __restrict__ out_i, int B, int C, int H,
                 int W, int nk, int nrep, int P, int LOV, int RV, int LOH, int RH, int PVB, int PHB) {
    extern __shared__ __align__(16) float smem[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int tid = threadIdx.x, NT = blockDim.x, lane = tid & 31, warp = tid >> 5;
    const Geo g = geometry(H, W, RV, RH);
    const int VPLB = RV * PVB, HPLB = RH * PHB;  // bf16 plane sizes (elements), multiples of 8

    float* s_x = smem;
    u16* s_zv = (u16*)(s_x + P * g.XPL);
    u16* s_zh = s_zv + P * VPLB;
    float* s_w = (float*)(s_zh + P * HPLB);
    int* s_tv = (int*)(s_w + nk * WS);
    int* s_th = s_tv + nk * nrep;
    int* s_id = s_th + nk * nrep;
    int* s_list = s_id + nk;

    compact_active(c, nk, active, s_list, &s_n);
    zero_words(s_x, (P * g.XPL * 4 + P * (VPLB + HPLB) * 2) / 16);
    __syncthreads();
    const int n = s_n;
    stage_tables(false, c, nk, nrep, n, w, offh, offv, idc, H, W, g, PVB, PHB, s_w, s_tv, s_th, s_id, s_list);
    stage_planes(x, s_x, b0, np, C, c, H, W, g.XPL, g.XP, 2 * RS, 4, false);

    // response tiles (CUDA cores)
    const bool own = tid < P * g.nT;
    const int p = own ? tid / g.nT : 0, q = tid - p * g.nT;
    int ac = 0, bc = 0;
    if (own) tile_c(q, g, ac, bc);
    const float* xc = s_x + p * g.XPL + (4 * ac + RS) * g.XP + 4 * bc + 4;
    u16* zvc = s_zv + p * VPLB + (4 * ac + LOV) * PVB + 4 * bc;
    u16* zhc = s_zh + p * HPLB + (4 * bc + LOH) * PHB + 4 * ac;

    const GatherStripe gs = gather_stripe(warp, P, H, W, s_zv, s_zh, VPLB, HPLB, LOV, LOH, PVB, PHB);
    const bool isV = gs.isV, isH = gs.isH;
    const int m0 = gs.m0, nlines = gs.nlines, ntile = isV ? (W + 7) / 8 : (H + 7) / 8;
    const u32 base = gs.base;
    // identity fragment rows of A: lane holds (row g, cols 2t, 2t+1) and (row g + 8, cols 2t + 8, 2t + 9)
    const int gq = lane >> 2, tq = lane & 3;
    float acc[MAXNT][4], acci[MAXNT][4];
    zero_tiles(acc, acci);
    __syncthreads();

    for (int i = 0; i < n; ++i) {
        float wr[KK];
        load_weights(s_w + i * WS, wr);
        if (own) {
            float z[4][4];
            tile_response(xc, g.XP, wr, z);
#pragma unroll
            for (int ri = 0; ri < 4; ++ri)
                *(uint2*)(zvc + ri * PVB) = make_uint2(bf16x2(z[ri][0], z[ri][1]), bf16x2(z[ri][2], z[ri][3]));
#pragma unroll
            for (int ci = 0; ci < 4; ++ci)
                *(uint2*)(zhc + ci * PHB) = make_uint2(bf16x2(z[0][ci], z[1][ci]), bf16x2(z[2][ci], z[3][ci]));
        }
        for (int h = tid; h < P * g.nHalo; h += NT) {
            const Halo s = halo_item(h, g);
            float zs[4];
            halo_response(s_x, s, g, wr, zs);
            u16* dst = s.row ? s_zv + s.p * VPLB + (s.line + LOV) * PVB + s.first
                             : s_zh + s.p * HPLB + (s.line + LOH) * PHB + s.first;
            *(uint2*)dst = make_uint2(bf16x2(zs[0], zs[1]), bf16x2(zs[2], zs[3]));
        }
        __syncthreads();
        if (isV || isH) {
            const u32 one = (gq == 2 * tq ? 0x3F80u : 0u) | (gq == 2 * tq + 1 ? 0x3F800000u : 0u);
            const int* tab = (isV ? s_tv : s_th) + i * nrep;
            for (int gg = 0; gg < nrep; ++gg) {
                const int o = tab[gg];
                if (o != SKIP) mma_gather(acc, base + 2 * o, ntile, one);
            }
            const int ic = s_id[i];
            if (isV && ic) {
                const u32 f = bf16x2((float)ic, (float)ic);
                const u32 diag = (gq == 2 * tq ? (f & 0xffffu) : 0u) | (gq == 2 * tq + 1 ? (f & 0xffff0000u) : 0u);
                mma_gather(acci, base, ntile, diag);
            }
        }
        __syncthreads();
    }

    if (isV) {
        store_lines(out_v, acc, m0, nlines, H, W, ntile, b0, np, C, c, H, W, false);
        store_lines(out_i, acci, m0, nlines, H, W, ntile, b0, np, C, c, H, W, false);
    } else if (isH) {
        store_lines(out_h, acc, m0, nlines, W, H, ntile, b0, np, C, c, H, W, true);
    }
}
// ------------------------------------------------------------------------------------------------
// study_tcs_fwd (bf16): every pass on the tensor cores. study_sp_mma_fwd's gathers, with the
// responses computed by mma as well: for one orientation, a 16-line x 8-column tile of Z_j is
//     Z[line, col] = sum_a sum_q X[line + a - RS, q] T_a[q, col],  T_a[q, col] = w_a(q - col + RS)
// over a 16-column window of the staged bf16 input that starts 4 columns left of the tile (one
// m16n8k16 per line tap a; A by ldmatrix, T_a from a per-block fragment table). The vertical
// orientation (lines = image rows, w_a = row a of the kernel) fills the V plane; the horizontal
// one runs on the transposed input (lines = image columns, w_a = column a) and fills the H plane,
// so neither needs a transposed store. Z planes are double-buffered: one barrier per kernel.
__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void mma_full(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Element pitch of a staged bf16 input plane of n columns: 8 * odd (conflict-free ldmatrix rows).
__device__ __forceinline__ int bf16_pitch(int n) {
    const int p = (n + 7) >> 3;
    return 8 * (p | 1);
}

// a / b for 0 <= a < 4096 and 1 <= b <= 128 through a float reciprocal: (a + 0.5) / b stays at
// least 1 / 256 away from an integer, far above the product's rounding error.
__device__ __forceinline__ int small_div(int a, float inv_b) { return __float2int_rz(((float)a + 0.5f) * inv_b); }

// Stages np planes of channel c as bf16, row-major into d0 (element (y, x) of image p at p * pl0 +
// (y + 2RS) * pb0 + x + 4) and transposed into d1 (p * pl1 + (x + 2RS) * pb1 + y + 4). Each thread
// issues 8 independent loads before storing: the loads' latency is paid once per round, not per
// element (with a row-per-warp loop instead, study_tcs_fwd took 0.94 ms at stage 1, density 0.3,
// against 0.76 ms with this one; both timings with NaN-filled outputs).
__device__ __forceinline__ void stage_both(const u16* __restrict__ src, u16* d0, u16* d1, int b0, int np, int C, int c,
                                           int H, int W, int pl0, int pb0, int pl1, int pb1) {
    const int tid = threadIdx.x, NT = blockDim.x, HW = H * W;
    const float invW = 1.f / (float)W;
    for (int p = 0; p < np; ++p) {
        const u16* s = src + ((long long)(b0 + p) * C + c) * HW;
        for (int e0 = tid; e0 < HW; e0 += 8 * NT) {
            u16 v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = e0 + k * NT < HW ? s[e0 + k * NT] : (u16)0;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int e = e0 + k * NT;
                if (e >= HW) break;
                const int y = small_div(e, invW), xx = e - y * W;
                d0[p * pl0 + (y + 2 * RS) * pb0 + xx + 4] = v[k];
                d1[p * pl1 + (xx + 2 * RS) * pb1 + y + 4] = v[k];
            }
        }
    }
}

#ifndef TCS_NTV
#define TCS_NTV 1  // column tiles of the vertical orientation, ceil(W / 8): set per plane size
#endif
#ifndef TCS_NTH
#define TCS_NTH 1  // ... of the horizontal orientation, ceil(H / 8)
#endif

// Shifted identity gathers over NTT column tiles (no run-time tile count: no branches around the
// mma, whose operands then stay in place).
template <int NTT>
__device__ __forceinline__ void gather_tiles(float (&acc)[MAXNT][4], u32 base, u32 a, u32 zero) {
#pragma unroll
    for (int q = 0; q < NTT / 2; ++q) {
        u32 b0, b1, b2, b3;
        ldsm_x4_t(base + 32 * q, b0, b1, b2, b3);
        mma_full(acc[2 * q], a, zero, zero, a, b0, b1);
        mma_full(acc[2 * q + 1], a, zero, zero, a, b2, b3);
    }
    if (NTT & 1) {
        u32 b0, b1;
        ldsm_x2_t(base + 32 * (NTT / 2), b0, b1);
        mma_full(acc[NTT - 1], a, zero, zero, a, b0, b1);
    }
}

// Two shifted copies (base0, base1) into the same tiles: all loads first, then the mma, so the
// second copy's loads overlap the first's.
template <int NTT>
__device__ __forceinline__ void gather_pair(float (&acc)[MAXNT][4], u32 base0, u32 base1, u32 a, u32 zero) {
    u32 b[2][(NTT + 1) / 2][4];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
        const u32 base = k ? base1 : base0;
#pragma unroll
        for (int q = 0; q < NTT / 2; ++q) ldsm_x4_t(base + 32 * q, b[k][q][0], b[k][q][1], b[k][q][2], b[k][q][3]);
        if (NTT & 1) ldsm_x2_t(base + 32 * (NTT / 2), b[k][NTT / 2][0], b[k][NTT / 2][1]);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
        for (int t = 0; t < NTT; ++t) mma_full(acc[t], a, zero, zero, a, b[k][t / 2][2 * (t & 1)], b[k][t / 2][2 * (t & 1) + 1]);
}

// The N_rep (<= 4) shifts of one kernel from table tab, two at a time where neither is SKIP.
template <int NTT>
__device__ __forceinline__ void gather_shifts(float (&acc)[MAXNT][4], const int* tab, int nrep, u32 base, u32 one,
                                              u32 zero) {
    int o[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) o[g] = g < nrep ? tab[g] : SKIP;
#pragma unroll
    for (int g = 0; g < 4; g += 2) {
        if (o[g] != SKIP && o[g + 1] != SKIP) {
            gather_pair<NTT>(acc, base + 2 * o[g], base + 2 * o[g + 1], one, zero);
        } else {
            if (o[g] != SKIP) gather_tiles<NTT>(acc, base + 2 * o[g], one, zero);
            if (o[g + 1] != SKIP) gather_tiles<NTT>(acc, base + 2 * o[g + 1], one, zero);
        }
    }
}

// Response stripe: lines [m0, m0 + 16) of one orientation (line = image p, position l in [-RS, n_in
// + RS)), NTT column tiles, for the kernel whose fragment table is tb (KS x 32 uint2), stored as
// bf16 into the Z plane zp (row (l + lo) of image p, pitch zpb, plane zpl elements).
struct Stripe {
    u32 abase;  // ldmatrix address of the lane's input row (line tap 0) and column half
    u32 tap;  // bytes between the input rows of consecutive line taps
    int z0, z1;  // element offsets of the lane's two output rows in the Z planes, -1: no line
};

__device__ __forceinline__ Stripe make_stripe(u32 xs, int xpl, int xpb, int n_in, int np, int m0, int zpl, int zpb,
                                              int lo) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const int NL = n_in + 2 * RS, nlines = np * NL;
    const float inv = 1.f / (float)NL;
    const int la = min(m0 + (lane & 15), nlines - 1), pa = small_div(la, inv), ya = la - pa * NL;  // ya = l + RS
    Stripe st;
    st.abase = xs + 2 * (pa * xpl + ya * xpb) + 16 * (lane >> 4);
    st.tap = 2 * xpb;
    const int l0 = m0 + gq, l1 = l0 + 8, p0 = small_div(l0, inv), p1 = small_div(l1, inv);
    st.z0 = l0 < nlines ? p0 * zpl + (l0 - p0 * NL - RS + lo) * zpb + 2 * tq : -1;
    st.z1 = l1 < nlines ? p1 * zpl + (l1 - p1 * NL - RS + lo) * zpb + 2 * tq : -1;
    return st;
}

template <int NTT>
__device__ __forceinline__ void response_stripe(const Stripe& st, const uint2* tb, u16* zp) {
    const int lane = threadIdx.x & 31;
    uint2 b[KS];
#pragma unroll
    for (int a = 0; a < KS; ++a) b[a] = tb[a * 32 + lane];
#pragma unroll
    for (int nn = 0; nn < NTT; ++nn) {
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int a = 0; a < KS; ++a) {
            u32 a0, a1, a2, a3;
            ldsm_x4(st.abase + a * st.tap + 16 * nn, a0, a1, a2, a3);
            mma_full(acc, a0, a1, a2, a3, b[a].x, b[a].y);
        }
        if (st.z0 >= 0) *(u32*)(zp + st.z0 + 8 * nn) = bf16x2(acc[0], acc[1]);
        if (st.z1 >= 0) *(u32*)(zp + st.z1 + 8 * nn) = bf16x2(acc[2], acc[3]);
    }
}

// Stores a stripe of accumulators (lines m0 + g, m0 + g + 8; columns 8 n + 2t, + 1) as bf16: line
// (image p, position l of n_in); row-major lines are image rows (pairs of columns in one 4-byte
// store where aligned), transposed ones image columns.
template <int NTT>
__device__ __forceinline__ void store_stripe(u16* out, const float (&acc)[MAXNT][4], int m0, int n_in, int ncol, int b0,
                                             int np, int C, int c, int H, int W, bool transposed) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float inv = 1.f / (float)n_in;
    const bool pairs = !transposed && (W % 2 == 0);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int line = m0 + g + 8 * half, p = small_div(line, inv), l = line - p * n_in;
        if (p >= np) continue;
        u16* plane = out + ((long long)(b0 + p) * C + c) * H * W;
#pragma unroll
        for (int nn = 0; nn < NTT; ++nn) {
            const int col = 8 * nn + 2 * t;
            const float v0 = acc[nn][2 * half], v1 = acc[nn][2 * half + 1];
            if (pairs && col + 1 < ncol) {
                *(u32*)(plane + l * W + col) = bf16x2(v0, v1);
            } else {
                const u32 pr = bf16x2(v0, v1);
                if (col < ncol) plane[transposed ? col * W + l : l * W + col] = (u16)(pr & 0xffffu);
                if (col + 1 < ncol) plane[transposed ? (col + 1) * W + l : l * W + col + 1] = (u16)(pr >> 16);
            }
        }
    }
}

// Shared-memory carve-up of the all-tensor-core forwards.
struct TcsSmem {
    u16 *x0, *x1, *z;  // input planes (row-major, transposed); Z buffer k at z + k * ZBUF, V then H planes
    float* w;
    int *tv, *th, *id, *list;
    uint2* tb;  // Toeplitz fragments [kernel][orientation][tap][lane]
    int XB0, XB1, XL0, XL1, VPLB, HPLB, ZBUF, n;
};

#define TCS_ARGS                                                                                                    \
    const u16 *__restrict__ x, const float *__restrict__ w, const int *__restrict__ offh,                          \
        const int *__restrict__ offv, const int *__restrict__ idc, const unsigned char *__restrict__ active,        \
        u16 *__restrict__ out_h, u16 *__restrict__ out_v, u16 *__restrict__ out_i, int B, int C, int H, int W, int nk, \
        int nrep, int P, int LOV, int RV, int LOH, int RH, int PVB, int PHB

// Carves shared memory, stages the tables of the active kernels and the input planes (both
// orientations), and builds the Toeplitz fragment table: b.x = (T[2t][g], T[2t + 1][g]), b.y =
// (T[2t + 8][g], T[2t + 9][g]), T[q][col] = w_a(q - 4 - col + RS) (the window starts 4 columns left
// of the tile). Ends with a barrier.
__device__ __forceinline__ TcsSmem tcs_setup(float* smem, int* s_n, TCS_ARGS) {
    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int tid = threadIdx.x, NT = blockDim.x;
    const Geo g = geometry(H, W, RV, RH);
    TcsSmem m;
    m.XB0 = bf16_pitch(8 * TCS_NTV + 8);
    m.XB1 = bf16_pitch(8 * TCS_NTH + 8);
    m.XL0 = (H + 4 * RS) * m.XB0;
    m.XL1 = (W + 4 * RS) * m.XB1;
    m.VPLB = RV * PVB;
    m.HPLB = RH * PHB;
    m.ZBUF = P * (m.VPLB + m.HPLB);
    m.x0 = (u16*)smem;
    m.x1 = m.x0 + P * m.XL0;
    m.z = m.x1 + P * m.XL1;
    m.w = (float*)(m.z + 2 * m.ZBUF);
    m.tv = (int*)(m.w + nk * WS);
    m.th = m.tv + nk * nrep;
    m.id = m.th + nk * nrep;
    m.list = m.id + nk;
    m.tb = (uint2*)(m.list + nk);  // the table words are even
    compact_active(c, nk, active, m.list, s_n);
    zero_words((float*)m.x0, (P * (m.XL0 + m.XL1) + 2 * m.ZBUF) / 8);
    __syncthreads();
    m.n = *s_n;
    stage_tables(false, c, nk, nrep, m.n, w, offh, offv, idc, H, W, g, PVB, PHB, m.w, m.tv, m.th, m.id, m.list);
    stage_both(x, m.x0, m.x1, b0, np, C, c, H, W, m.XL0, m.XB0, m.XL1, m.XB1);
    __syncthreads();
    for (int t = tid; t < m.n * 2 * KS * 32; t += NT) {
        const int ln = t & 31, rest = t >> 5, a = rest % KS, o = (rest / KS) & 1, i = rest / (2 * KS);
        const int gq = ln >> 2, tq = ln & 3;
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int q = 2 * tq + (e & 1) + 8 * (e >> 1), ct = q - 4 - gq + RS;
            v[e] = (ct >= 0 && ct < KS) ? m.w[i * WS + (o == 0 ? a * KS + ct : ct * KS + a)] : 0.f;
        }
        m.tb[t] = make_uint2(bf16x2(v[0], v[1]), bf16x2(v[2], v[3]));
    }
    __syncthreads();
    return m;
}

// The lane's response stripe number k (V orientation first, then H): s = first + k * step.
__device__ __forceinline__ Stripe tcs_stripe(const TcsSmem& m, int s, int nRV, int H, int W, int np, int LOV,
                                             int LOH, int PVB, int PHB) {
    return s < nRV ? make_stripe(smem_addr(m.x0), m.XL0, m.XB0, H, np, 16 * s, m.VPLB, PVB, LOV)
                   : make_stripe(smem_addr(m.x1), m.XL1, m.XB1, W, np, 16 * (s - nRV), m.HPLB, PHB, LOH);
}

// Adds kernel i's shifted copies (buffer at byte offset bb from the stripe's rows) into the gather
// stripe's accumulators: N_rep V or H shifts, and the identity for V stripes.
__device__ __forceinline__ void tcs_gather(const TcsSmem& m, const GatherStripe& gs, int i, int nrep, u32 bb,
                                           float (&acc)[MAXNT][4], float (&acci)[MAXNT][4], u32 one, u32 zero) {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    if (gs.isV) {
        gather_shifts<TCS_NTV>(acc, m.tv + i * nrep, nrep, bb, one, zero);
        const int ic = m.id[i];
        if (ic) {
            const u32 f = bf16x2((float)ic, (float)ic);
            const u32 diag = (gq == 2 * tq ? (f & 0xffffu) : 0u) | (gq == 2 * tq + 1 ? (f & 0xffff0000u) : 0u);
            gather_tiles<TCS_NTV>(acci, bb, diag, zero);
        }
    } else if (gs.isH) {
        gather_shifts<TCS_NTH>(acc, m.th + i * nrep, nrep, bb, one, zero);
    }
}

__device__ __forceinline__ void tcs_store(const GatherStripe& gs, const float (&acc)[MAXNT][4],
                                          const float (&acci)[MAXNT][4], u16* out_h, u16* out_v, u16* out_i, int b0,
                                          int np, int C, int c, int H, int W) {
    if (gs.isV) {
        store_stripe<TCS_NTV>(out_v, acc, gs.m0, H, W, b0, np, C, c, H, W, false);
        store_stripe<TCS_NTV>(out_i, acci, gs.m0, H, W, b0, np, C, c, H, W, false);
    } else if (gs.isH) {
        store_stripe<TCS_NTH>(out_h, acc, gs.m0, W, H, b0, np, C, c, H, W, true);
    }
}

__device__ __forceinline__ u32 identity_fragment() {
    const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    return (gq == 2 * tq ? 0x3F80u : 0u) | (gq == 2 * tq + 1 ? 0x3F800000u : 0u);
}

// Entry of the all-tensor-core forwards: shared memory set up (m), and the block's channel c and
// images [b0, b0 + np).
#define TCS_PREAMBLE                                                                                            \
    extern __shared__ __align__(16) float smem[];                                                               \
    __shared__ int s_n;                                                                                         \
    const TcsSmem m = tcs_setup(smem, &s_n, x, w, offh, offv, idc, active, out_h, out_v, out_i, B, C, H, W, nk, \
                                nrep, P, LOV, RV, LOH, RH, PVB, PHB);                                           \
    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0)

extern "C" __global__ void __launch_bounds__(512, 1) study_tcs_fwd(TCS_ARGS) {
    TCS_PREAMBLE;
    const int warp = threadIdx.x >> 5, NW = blockDim.x >> 5, n = m.n;
    // gather stripes, one per warp; response stripes round-robin over the warps (at most 2 per warp
    // kept in registers, the host checks)
    const GatherStripe gs = gather_stripe(warp, P, H, W, m.z, m.z + P * m.VPLB, m.VPLB, m.HPLB, LOV, LOH, PVB, PHB);
    const int nRV = (P * (H + 2 * RS) + 15) / 16, nRH = (P * (W + 2 * RS) + 15) / 16;
    Stripe rs[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) rs[k] = tcs_stripe(m, warp + k * NW, nRV, H, W, np, LOV, LOH, PVB, PHB);
    const u32 one = identity_fragment(), zero = (u32)min(n, 0);  // zero from a run-time value: stays in a register
    float acc[MAXNT][4], acci[MAXNT][4];
    zero_tiles(acc, acci);

    for (int i = 0; i < n; ++i) {
        const int buf = i & 1;
        u16* zb = m.z + buf * m.ZBUF;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int sidx = warp + k * NW;
            if (sidx >= nRV + nRH) continue;
            if (sidx < nRV)
                response_stripe<TCS_NTV>(rs[k], m.tb + (i * 2 + 0) * KS * 32, zb);
            else
                response_stripe<TCS_NTH>(rs[k], m.tb + (i * 2 + 1) * KS * 32, zb + P * m.VPLB);
        }
        __syncthreads();
        tcs_gather(m, gs, i, nrep, gs.base + 2 * buf * m.ZBUF, acc, acci, one, zero);
    }
    tcs_store(gs, acc, acci, out_h, out_v, out_i, b0, np, C, c, H, W);
}

// ------------------------------------------------------------------------------------------------
// study_tcs_pc_fwd: study_tcs_fwd with its warps split into producers and consumers. Producer warp
// s < nRV + nRH owns response stripe s and keeps its input fragments (all column tiles and line
// taps) in registers for the whole block, so a kernel's response costs KS * NTT mma and the
// stores. The next warps gather. The two Z buffers are handed over with named barriers (full: 1,
// 2; empty: 3, 4) instead of a block-wide barrier per kernel.
__device__ __forceinline__ void bar_sync(int id, int count) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count)); }
__device__ __forceinline__ void bar_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

template <int NTT>
__device__ __forceinline__ void produce(const Stripe& st, const TcsSmem& m, int orient, u16* zp, int n, int NT) {
    const int lane = threadIdx.x & 31;
    u32 xa[NTT][KS][4];
#pragma unroll
    for (int nn = 0; nn < NTT; ++nn)
#pragma unroll
        for (int a = 0; a < KS; ++a)
            ldsm_x4(st.abase + a * st.tap + 16 * nn, xa[nn][a][0], xa[nn][a][1], xa[nn][a][2], xa[nn][a][3]);
    for (int i = 0; i < n; ++i) {
        const int buf = i & 1;
        if (i >= 2) bar_sync(3 + buf, NT);  // the consumers are done with kernel i - 2
        const uint2* tb = m.tb + (i * 2 + orient) * KS * 32;
        uint2 b[KS];
#pragma unroll
        for (int a = 0; a < KS; ++a) b[a] = tb[a * 32 + lane];
        u16* z = zp + buf * m.ZBUF;
#pragma unroll
        for (int nn = 0; nn < NTT; ++nn) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int a = 0; a < KS; ++a)
                mma_full(acc, xa[nn][a][0], xa[nn][a][1], xa[nn][a][2], xa[nn][a][3], b[a].x, b[a].y);
            if (st.z0 >= 0) *(u32*)(z + st.z0 + 8 * nn) = bf16x2(acc[0], acc[1]);
            if (st.z1 >= 0) *(u32*)(z + st.z1 + 8 * nn) = bf16x2(acc[2], acc[3]);
        }
        bar_arrive(1 + buf, NT);  // Z_i is in buffer buf
    }
}

extern "C" __global__ void __launch_bounds__(512, 1) study_tcs_pc_fwd(TCS_ARGS) {
    TCS_PREAMBLE;
    const int warp = threadIdx.x >> 5, NT = blockDim.x, n = m.n;
    const int nRV = (P * (H + 2 * RS) + 15) / 16, nRH = (P * (W + 2 * RS) + 15) / 16, nProd = nRV + nRH;
    if (warp < nProd) {
        const Stripe st = tcs_stripe(m, warp, nRV, H, W, np, LOV, LOH, PVB, PHB);
        if (warp < nRV)
            produce<TCS_NTV>(st, m, 0, m.z, n, NT);
        else
            produce<TCS_NTH>(st, m, 1, m.z + P * m.VPLB, n, NT);
        return;
    }
    // consumers: warp nProd + k gathers stripe k
    const GatherStripe gs =
        gather_stripe(warp - nProd, P, H, W, m.z, m.z + P * m.VPLB, m.VPLB, m.HPLB, LOV, LOH, PVB, PHB);
    const u32 one = identity_fragment(), zero = (u32)min(n, 0);
    float acc[MAXNT][4], acci[MAXNT][4];
    zero_tiles(acc, acci);
    for (int i = 0; i < n; ++i) {
        const int buf = i & 1;
        bar_sync(1 + buf, NT);  // Z_i is ready
        tcs_gather(m, gs, i, nrep, gs.base + 2 * buf * m.ZBUF, acc, acci, one, zero);
        if (i + 2 < n) bar_arrive(3 + buf, NT);  // only arrivals a producer will wait for
    }
    tcs_store(gs, acc, acci, out_h, out_v, out_i, b0, np, C, c, H, W);
}
#endif  // DT == 2
