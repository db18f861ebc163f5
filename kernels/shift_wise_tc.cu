// Shift-wise operator (SPEC §1.6) on tensor cores, for bf16 / fp16 storage with fp32 accumulation.
// Compiled at run time by NVRTC through cupy.RawModule (src/swconv/ops/cuda.py); design, index
// math and determinism argument in kernels/README.md ("Tensor-core path").
//
// The three branches are depthwise convolutions with the per-channel cross kernels assembled from
// the masked small kernels (per forward block, cross_to_smem; the backward copies the forward's
// tables): wh (k x L, horizontal), wv (stored [v][t], the transposed L x k vertical bar) and wi
// (k x k identity), L = nk*k. Along the long axis each one is
// a Toeplitz matrix, so for one channel and one short-axis tap u a branch is the GEMM
//     out[(image, line), col] += A[(image, line), q] * T_u[q, col],   A = staged input lines, T_u[q, col] = w[u][q - col + TO]
// run with mma.sync m16n8k16 (A through ldmatrix from shared memory, T_u from a per-block fragment
// table). The vertical branch runs on transposed planes, so it is the same code. Backward:
// grad_x is the same GEMM with flipped kernels over the staged gradients; the cross-kernel
// gradients are GEMMs over the image rows whose diagonals are the taps (swc_tc_bwd), mapped back
// to the small kernels by swc_cross_grad. No atomics anywhere: every sum has a fixed order.
//
// Compile-time parameters (-D): DT 1 float16 / 2 bfloat16, KS small kernel size (odd).
// Planes up to 64 x 64 (the host falls back to the v2 kernels beyond that).

#ifndef DT
#define DT 2
#endif
#ifndef KS
#define KS 3
#endif
#define RS (KS / 2)
// resident blocks per SM asked of the compiler (the register cap: 64 and 128 registers). The
// backward at 3 (85 registers) spilled and ran 1.2x slower at stage 1 (H200); its shared memory
// allows 2 resident blocks at the SW-T stages anyway (cuda.py: _TC_BLOCKS_PER_SM).
#ifndef FWD_MINB
#define FWD_MINB 4
#endif
#ifndef BWD_MINB
#define BWD_MINB 2
#endif
#define NWARP 8
#define NTHR (NWARP * 32)

typedef unsigned short u16;
typedef unsigned int u32;
struct __align__(8) frag2 {
    u32 x, y;
};
struct __align__(16) quad {
    u32 a, b, c, d;
};

#if DT != 1 && DT != 2
#error "DT must be 1 (f16) or 2 (bf16)"
#endif

__device__ __forceinline__ u16 f2h(float v) {
    u16 h;
#if DT == 2
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
#endif
    return h;
}

// lower half = lo (lower k / column index), upper half = hi
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 d;
#if DT == 2
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#endif
    return d;
}

__device__ __forceinline__ u32 saddr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x2_t(u32 addr, u32& r0, u32& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(r0), "=r"(r1) : "r"(addr));
}

#if DT == 2
#define MMA_AB "bf16"
#else
#define MMA_AB "f16"
#endif
__device__ __forceinline__ void mma16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_AB "." MMA_AB
                 ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ int floordiv8(int a) { return a >= 0 ? a / 8 : -((-a + 7) / 8); }

// ---------------------------------------------------------------------------------------------
// Geometry (identical formulas in cuda.py:_tc_smem). A staged plane holds `lines` lines of
// `pitch` 16-bit elements: line = image line + RS (zero halo of RS lines each side), element =
// image position along the line, zero up to the pitch. pitch = 16*ceil(n/16) + 8 keeps ldmatrix
// rows on distinct banks (odd number of 16-byte units).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ int pitch_of(int n) { return 16 * ((n + 15) >> 4) + 8; }
__device__ __forceinline__ int r16(int bytes) { return (bytes + 15) & ~15; }

// Fragment-table geometry of a pass with Lt taps whose tap index is t = q - col + TO: the 16x8
// block (k-chunk kc, n-tile nt) only depends on d = 2*kc - nt; d in [dmin, dmin + nd).
__device__ __forceinline__ void table_geo(int Lt, int TO, int& dmin, int& nd) {
    dmin = -floordiv8(15 + TO);  // ceil((-15 - TO) / 8)
    const int dmax = floordiv8(Lt + 6 - TO);
    nd = dmax - dmin + 1;
}

// tb[(u*nd + dd)*32 + lane] = the B fragment {k = 2t4, 2t4+1 | 2t4+8, 2t4+9; n = g} of tap block
// d = dd + dmin: taps t = 8d + 2t4 - g + TO + {0, 1, 8, 9}, zero outside [0, Lt). `flip` reads the
// kernel rotated by 180 degrees (backward data gradient).
__device__ void build_table(frag2* tb, const float* wt, int Lt, int TO, int dmin, int nd, bool flip) {
    const int n = KS * nd * 32;
    for (int e = threadIdx.x; e < n; e += NTHR) {
        const int lane = e & 31, ud = e >> 5;
        const int u = ud / nd, dd = ud - u * nd;
        const int t0 = 8 * (dd + dmin) + 2 * (lane & 3) - (lane >> 2) + TO;
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int t = t0 + (i & 1) + 8 * (i >> 1);
            float s = 0.f;
            if (t >= 0 && t < Lt) s = flip ? wt[(KS - 1 - u) * Lt + (Lt - 1 - t)] : wt[u * Lt + t];
            v[i] = s;
        }
        tb[e].x = pack2(v[0], v[1]);
        tb[e].y = pack2(v[2], v[3]);
    }
}

// Copies the np planes of channel c of NS tensors into row-major (S[s]) and / or transposed
// (ST[s]) staged planes. Each thread issues U * NS independent loads before its stores (staging is
// latency-bound); with `vec` (W even, 4-byte aligned tensors) elements move in pairs. Indices are
// split with float reciprocals: exact here, because (e + 0.5) / n stays at least 0.5 / n away from
// an integer while the float error is below 1e-5 for e < 2^18.
template <int NS, int U>
__device__ __forceinline__ void stage(const u16* const (&src)[NS], u16* const (&S)[NS], u16* const (&ST)[NS], int b0,
                                      int np, int C, int c, int H, int W, int vec) {
    const int HW = H * W, SRh = H + 2 * RS, SPh = pitch_of(W), SRv = W + 2 * RS, SPv = pitch_of(H);
    const float inv_hw = 1.f / (float)HW, inv_w = 1.f / (float)W;
    const int step = vec ? 2 : 1, n = np * HW / step;
    for (int e0 = threadIdx.x; e0 < n; e0 += U * NTHR) {
        u32 v[U][NS];
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const int el = (e0 + k * NTHR) * step;
            if (el < np * HW) {
                const int p = (int)(((float)el + 0.5f) * inv_hw);
                const long long off = ((long long)(b0 + p) * C + c) * HW + (el - p * HW);
#pragma unroll
                for (int q = 0; q < NS; ++q) v[k][q] = vec ? *(const u32*)(src[q] + off) : (u32)src[q][off];
            }
        }
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const int el = (e0 + k * NTHR) * step;
            if (el < np * HW) {
                const int p = (int)(((float)el + 0.5f) * inv_hw), rem = el - p * HW;
                const int h = (int)(((float)rem + 0.5f) * inv_w), w = rem - h * W;
#pragma unroll
                for (int q = 0; q < NS; ++q) {
                    if (vec) {
                        if (S[q]) *(u32*)(S[q] + (p * SRh + h + RS) * SPh + w) = v[k][q];
                        if (ST[q]) {
                            u16* t = ST[q] + (p * SRv + w + RS) * SPv + h;
                            t[0] = (u16)(v[k][q] & 0xffffu);
                            t[SPv] = (u16)(v[k][q] >> 16);
                        }
                    } else {
                        if (S[q]) S[q][(p * SRh + h + RS) * SPh + w] = (u16)v[k][q];
                        if (ST[q]) ST[q][(p * SRv + w + RS) * SPv + h] = (u16)v[k][q];
                    }
                }
            }
        }
    }
}

__device__ __forceinline__ void zero_smem(void* p, int bytes) {
    quad* q = (quad*)p;
    quad z;
    z.a = z.b = z.c = z.d = 0u;
    for (int i = threadIdx.x; i < (bytes >> 4); i += NTHR) q[i] = z;
}

// One 16-row tile (rows R = mt*16 ..) of a long-axis pass: R = image * nlines + line, output
// columns [0, ncol), NNT = ceil(ncol / 8) n-tiles. Accumulates into acc[n-tile][4] (C fragment
// layout). NNT is a template parameter (tpass dispatches on it): with a run-time count the compiler
// issued all eight n-tiles' mma under predicates, and predicated-off HMMA still take tensor-pipe
// cycles (ncu: 1.5 / 2.2 / 4x the HMMA needed in the forward at SW-T stages 1-3).
template <int NNT>
__device__ __forceinline__ void tpass_nt(float (&acc)[8][4], const u16* S, int SR, int SP, int nlines, int nrows,
                                         int ncol, int mt, const frag2* tb, int dmin, int nd, const u16* zl) {
    const int lane = threadIdx.x & 31;
    const int R = mt * 16 + (lane & 15);
    int base = -1;
    if (R < nrows) {
        const int p = R / nlines;
        base = p * SR + (R - p * nlines);
    }
    const int NKC = (ncol + 15) >> 4;
    const int coff = (lane >> 4) * 8;
    for (int u = 0; u < KS; ++u) {
        const u32 row = saddr((base >= 0 ? S + (base + u) * SP : zl) + coff);
        const frag2* tu = tb + u * nd * 32 + lane;
        for (int kc = 0; kc < NKC; ++kc) {
            u32 a0, a1, a2, a3;
            ldsm_x4(row + kc * 32, a0, a1, a2, a3);
#pragma unroll
            for (int nt = 0; nt < NNT; ++nt) {
                const int dd = 2 * kc - nt - dmin;
                if (dd >= 0 && dd < nd) {
                    const frag2 b = tu[dd * 32];
                    mma16816(acc[nt], a0, a1, a2, a3, b.x, b.y);
                }
            }
        }
    }
}

__device__ __forceinline__ void tpass(float (&acc)[8][4], const u16* S, int SR, int SP, int nlines, int nrows, int ncol,
                                      int mt, const frag2* tb, int dmin, int nd, const u16* zl) {
#define TPASS_CASE(n) \
    case n: tpass_nt<n>(acc, S, SR, SP, nlines, nrows, ncol, mt, tb, dmin, nd, zl); break;
    switch ((ncol + 7) >> 3) {
        TPASS_CASE(1) TPASS_CASE(2) TPASS_CASE(3) TPASS_CASE(4) TPASS_CASE(5) TPASS_CASE(6) TPASS_CASE(7)
        default: tpass_nt<8>(acc, S, SR, SP, nlines, nrows, ncol, mt, tb, dmin, nd, zl);
    }
#undef TPASS_CASE
}

__device__ __forceinline__ void zero_acc(float (&acc)[8][4]) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
}

// Writes a C-fragment tile to global memory. Row R = (image p, line i), column col.
// transposed = false: element (i, col) of the plane; true: element (col, i). `add` (smem fp32,
// [image][i][col], non-transposed only) is added first.
__device__ __forceinline__ void store_tile(const float (&acc)[8][4], u16* __restrict__ out, const float* add, int b0,
                                           int C, int c, int H, int W, int nlines, int nrows, int ncol, int mt,
                                           bool transposed) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const long long HW = (long long)H * W;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int R = mt * 16 + g + half * 8;
        if (R >= nrows) continue;
        const int p = R / nlines, i = R - p * nlines;
        u16* plane = out + ((long long)(b0 + p) * C + c) * HW;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int col = nt * 8 + 2 * t4;
            if (col >= ncol) continue;
            float v0 = acc[nt][2 * half], v1 = acc[nt][2 * half + 1];
            const bool two = col + 1 < ncol;
            if (!transposed) {
                if (add) {
                    const float* a = add + (p * nlines + i) * ncol + col;
                    v0 += a[0];
                    if (two) v1 += a[1];
                }
                u16* o = plane + (long long)i * W + col;
                if (two && (W & 1) == 0) {
                    *(u32*)o = pack2(v0, v1);
                } else {
                    o[0] = f2h(v0);
                    if (two) o[1] = f2h(v1);
                }
            } else {
                plane[(long long)col * W + i] = f2h(v0);
                if (two) plane[(long long)(col + 1) * W + i] = f2h(v1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channel c's masked cross kernels into shared memory, wt = [wh KS*L][wv KS*L][wi KS*KS]:
// wh[u][t]: tile s = t / k, column t % k of horizontal slot s;  wv[v][t]: the vertical bar
// transposed (long-axis tap t, short-axis v);  wi[u][v]. Fixed summation order over the groups.
// Every forward block of the channel repeats this (the backward copies the tables the forward
// built: store_backward_tables). A tap's chain perm -> (mask, weight) is two dependent global
// reads per group, so a thread reads the kernel indices of GB groups at once, then their masks
// and weights at once.
// ---------------------------------------------------------------------------------------------
__device__ void cross_to_smem(float* wt, const float* __restrict__ w, const int* __restrict__ perm_h,
                              const int* __restrict__ perm_v, const int* __restrict__ ident,
                              const unsigned char* __restrict__ active, int c, int C, int nk, int nrep) {
    constexpr int GB = 4;
    const int L = nk * KS, nhv = KS * L;
    const float* wc = w + (long long)c * nk * KS * KS;
    const unsigned char* ac = active + (long long)c * nk;
    for (int e = threadIdx.x; e < 2 * nhv + KS * KS; e += NTHR) {
        const int* src;  // kernel index of group g: src[g * gstride]
        long long gstride;
        int q;  // element of the small kernel
        if (e < 2 * nhv) {
            const bool vert = e >= nhv;
            const int f = vert ? e - nhv : e;
            const int u = f / L, t = f - u * L, sl = t / KS, b = t - sl * KS;
            src = (vert ? perm_v : perm_h) + (long long)c * nk + sl;
            gstride = (long long)C * nk;
            q = vert ? b * KS + u : u * KS + b;
        } else {
            src = ident + c;
            gstride = C;
            q = e - 2 * nhv;
        }
        float s = 0.f;
        for (int g0 = 0; g0 < nrep; g0 += GB) {
            int j[GB];
#pragma unroll
            for (int i = 0; i < GB; ++i) j[i] = g0 + i < nrep ? src[(g0 + i) * gstride] : -1;
            float v[GB];
            bool on[GB];
#pragma unroll
            for (int i = 0; i < GB; ++i) {
                on[i] = j[i] >= 0 && ac[max(j[i], 0)];
                v[i] = wc[max(j[i], 0) * KS * KS + q];
            }
#pragma unroll
            for (int i = 0; i < GB; ++i)
                if (on[i]) s += v[i];
        }
        wt[e] = s;
    }
}

// Small-kernel gradients from the per-block cross-kernel gradients part[nb][c][3][KS][L]
// (0: wh, 1: wv, 2: wi in the first KS taps). One block per channel sums its nb partials in block
// order (fixed, so deterministic) into shared memory, then maps them to the small kernels;
// inactive kernels get exactly 0. Folding the reduction in here saves a launch per backward.
extern "C" __global__ void swc_cross_grad(const float* __restrict__ part, const int* __restrict__ offh,
                                          const int* __restrict__ offv, const int* __restrict__ idc,
                                          const unsigned char* __restrict__ active, float* __restrict__ gw, int C,
                                          int nk, int nrep, int m, int nb) {
    extern __shared__ float G[];  // [3][KS][L]
    const int c = blockIdx.x, L = nk * KS, per = 3 * KS * L;
    const long long stride = (long long)C * per;
    for (int e = threadIdx.x; e < per; e += blockDim.x) {
        const float* src = part + (long long)c * per + e;
        float s = 0.f;
#pragma unroll 4
        for (int b = 0; b < nb; ++b) s += src[b * stride];
        G[e] = s;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nk * KS * KS; e += blockDim.x) {
        const int jl = e / (KS * KS), q = e - jl * (KS * KS), a = q / KS, b = q - a * KS, cj = c * nk + jl;
        float s = 0.f;
        if (active[cj]) {
            for (int g = 0; g < nrep; ++g) {
                const int sh = (offh[cj * nrep + g] - RS + m) / KS;
                const int sv = (offv[cj * nrep + g] - RS + m) / KS;
                s += G[a * L + sh * KS + b];
                s += G[(KS + b) * L + sv * KS + a];
            }
            s += (float)idc[cj] * G[(2 * KS + a) * L + b];
        }
        gw[(long long)cj * KS * KS + q] = s;
    }
}

// Head of a block's shared memory, common to forward and backward: a zero line (ldmatrix rows
// outside the planes), the channel's cross kernels (fp32: [wh KS*L][wv KS*L][wi KS*KS]) and the
// fragment tables of the three passes. TO: left extent of the long kernels as the passes read them.
struct CrossHead {
    u16* zl;
    float* wt;
    frag2 *tH, *tV, *tI;
    int dmH, ndH, dmI, ndI, zbytes;
};

// Lays the head out from `ptr` and advances `ptr` past it (same sizes as cuda.py:tc_smem_bytes);
// the cross kernels `wt` only with `cross` (the forward, which builds the tables from them).
__device__ __forceinline__ CrossHead carve_head(unsigned char*& ptr, int L, int TO, int SPh, int SPv, bool cross) {
    CrossHead h;
    table_geo(L, TO, h.dmH, h.ndH);
    table_geo(KS, RS, h.dmI, h.ndI);
    h.zbytes = r16(2 * max(SPh, SPv));
    h.zl = (u16*)ptr;
    ptr += h.zbytes;
    h.wt = cross ? (float*)ptr : nullptr;
    if (cross) ptr += r16(4 * (2 * KS * L + KS * KS));
    h.tH = (frag2*)ptr;
    ptr += KS * h.ndH * 256;
    h.tV = (frag2*)ptr;
    ptr += KS * h.ndH * 256;
    h.tI = (frag2*)ptr;
    ptr += KS * h.ndI * 256;
    return h;
}

// Zeroes the zero line, builds channel c's cross kernels, then (after one block barrier) the
// forward's fragment tables. Callers sync before the tables are read. (store_backward_tables
// repeats the three build_table calls flipped: one shared helper for both spilled the forward,
// 16-byte stack frame under its 64-register cap.)
__device__ __forceinline__ void fill_head(const CrossHead& h, const float* __restrict__ w,
                                          const int* __restrict__ perm_h, const int* __restrict__ perm_v,
                                          const int* __restrict__ ident, const unsigned char* __restrict__ active,
                                          int c, int C, int nk, int nrep, int TO) {
    const int L = nk * KS;
    zero_smem(h.zl, h.zbytes);
    cross_to_smem(h.wt, w, perm_h, perm_v, ident, active, c, C, nk, nrep);
    __syncthreads();
    build_table(h.tH, h.wt, L, TO, h.dmH, h.ndH, false);
    build_table(h.tV, h.wt + KS * L, L, TO, h.dmH, h.ndH, false);
    build_table(h.tI, h.wt + 2 * KS * L, KS, RS, h.dmI, h.ndI, false);
}

// frag2 entries of one channel's three fragment tables (tH, tV, tI: contiguous in the head).
__device__ __forceinline__ int table_entries(const CrossHead& h) { return KS * (2 * h.ndH + h.ndI) * 32; }

// The backward's fragment tables of channel c (the flipped cross kernels, tap offset TOb), built
// by the forward's first block of the channel from the cross kernels it holds in `h.wt` (after
// fill_head). When every backward block built its own cross kernels and tables, that set-up took
// 0.085 ms of the backward's 0.715 at SW-T stage 1; now one block per channel builds them and the
// backward blocks copy them (load_head).
__device__ __forceinline__ void store_backward_tables(frag2* __restrict__ btab, const CrossHead& h, int c, int L,
                                                      int TOb) {
    int dmB, ndB;
    table_geo(L, TOb, dmB, ndB);
    frag2* dst = btab + (long long)c * KS * (2 * ndB + h.ndI) * 32;
    build_table(dst, h.wt, L, TOb, dmB, ndB, true);
    build_table(dst + KS * ndB * 32, h.wt + KS * L, L, TOb, dmB, ndB, true);
    build_table(dst + 2 * KS * ndB * 32, h.wt + 2 * KS * L, KS, RS, h.dmI, h.ndI, true);
}

// Backward head: the zero line and channel c's tables copied from the forward's `btab`.
__device__ __forceinline__ void load_head(const CrossHead& h, const frag2* __restrict__ btab, int c) {
    zero_smem(h.zl, h.zbytes);
    const int n = table_entries(h) / 2;  // 16-byte units
    const quad* src = (const quad*)(btab + (long long)c * table_entries(h));
    quad* dst = (quad*)h.tH;
    for (int i = threadIdx.x; i < n; i += NTHR) dst[i] = src[i];
}

// ---------------------------------------------------------------------------------------------
// Forward. Grid (C, ceil(B / P)); block (c, by) computes the P images b0 .. of channel c.
// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NTHR, FWD_MINB)
swc_tc_fwd(const u16* __restrict__ x, const float* __restrict__ w, const int* __restrict__ perm_h,
           const int* __restrict__ perm_v, const int* __restrict__ ident, const unsigned char* __restrict__ active,
           u16* __restrict__ out_h, u16* __restrict__ out_v, u16* __restrict__ out_i, frag2* __restrict__ btab,
           int B, int C, int H, int W, int nk, int nrep, int m, int P, int vec) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int L = nk * KS, c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int warp = threadIdx.x >> 5;
    const int SRh = H + 2 * RS, SPh = pitch_of(W), SRv = W + 2 * RS, SPv = pitch_of(H);
    unsigned char* ptr = smem;
    const CrossHead hd = carve_head(ptr, L, m, SPh, SPv, true);
    u16* sx = (u16*)ptr;
    ptr += P * SRh * SPh * 2;
    u16* sxt = (u16*)ptr;
    ptr += P * SRv * SPv * 2;

    zero_smem(sx, (int)(ptr - (unsigned char*)sx));
    fill_head(hd, w, perm_h, perm_v, ident, active, c, C, nk, nrep, m);
    if (btab != nullptr && blockIdx.y == 0) store_backward_tables(btab, hd, c, L, L - 1 - m);
    {
        const u16* const src[1] = {x};
        u16* const rows[1] = {sx};
        u16* const cols[1] = {sxt};
        stage<1, 8>(src, rows, cols, b0, np, C, c, H, W, vec);
    }
    __syncthreads();

    const int MH = (np * H + 15) >> 4, MV = (np * W + 15) >> 4;
    float acc[8][4];
    // a call site per pass: one shared call site (selected arguments) ran the forward 8-13 % slower
    for (int it = warp; it < 2 * MH + MV; it += NWARP) {
        zero_acc(acc);
        if (it < MH) {
            tpass(acc, sx, SRh, SPh, H, np * H, W, it, hd.tH, hd.dmH, hd.ndH, hd.zl);
            store_tile(acc, out_h, nullptr, b0, C, c, H, W, H, np * H, W, it, false);
        } else if (it < 2 * MH) {
            tpass(acc, sx, SRh, SPh, H, np * H, W, it - MH, hd.tI, hd.dmI, hd.ndI, hd.zl);
            store_tile(acc, out_i, nullptr, b0, C, c, H, W, H, np * H, W, it - MH, false);
        } else {
            tpass(acc, sxt, SRv, SPv, W, np * W, H, it - 2 * MH, hd.tV, hd.dmH, hd.ndH, hd.zl);
            store_tile(acc, out_v, nullptr, b0, C, c, H, W, W, np * W, H, it - 2 * MH, true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward: cross-kernel gradient taps of one pass and one 16-row tile mt of
//     D[mrow, ncol] = sum_k A[p][mrow][k] * Bsrc[p][k - shift + RS][ncol],   tap t = mrow - ncol + mm,
// summed over the images p0 .. p1. A and B are staged planes (line = index + RS). Tile (mt, nt)
// holds the taps 8d + mm + e, d = 2*mt - nt, e = g - 2t4 + {0, -1, 8, 7} for the four C registers.
// ---------------------------------------------------------------------------------------------
// NT = ceil(Next / 8) n-tiles, a template parameter for the reason given at tpass_nt.
template <int NT>
__device__ __forceinline__ void dwpass_nt(float* tap, float* scr, const u16* A, int ASR, int ASP, int Mext,
                                          const u16* Bm, int BSR, int BSP, int Next, int Kext, int mp, int p0, int p1,
                                          int shift, int Lt, int mm, const u16* zl) {
    // two row tiles mt = 2mp, 2mp+1 share the B fragments; tile (mt, nt) has d = 2mt - nt, so the
    // accumulator index j = 2(mt - 2mp) - nt + 7 (0..9) collects the tiles with equal taps
    const int lane = threadIdx.x & 31;
    float acc[10][4];
#pragma unroll
    for (int i = 0; i < 10; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[i][q] = 0.f;
    const int KC = (Kext + 15) >> 4, MT = (Mext + 15) >> 4;
    const int d0 = 4 * mp - 7;  // d of accumulator 0
    for (int pk = p0 * KC; pk < p1 * KC; ++pk) {
        const int p = pk / KC, kc = pk - p * KC;
        const int kr = kc * 16 + (lane & 15);
        const int bl = kr - shift + 2 * RS;
        const u16* brow = (kr < Kext && bl < BSR) ? Bm + (p * BSR + bl) * BSP : zl;
        u32 b[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) ldsm_x2_t(saddr(brow + nt * 8), b[nt][0], b[nt][1]);
#pragma unroll
        for (int ml = 0; ml < 2; ++ml) {
            const int mt = 2 * mp + ml;
            if (mt < MT) {
                const int ar = mt * 16 + (lane & 15);
                const u16* arow = ar < Mext ? A + (p * ASR + ar + RS) * ASP : zl;
                u32 a0, a1, a2, a3;
                ldsm_x4(saddr(arow + kc * 16 + (lane >> 4) * 8), a0, a1, a2, a3);
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int d8 = 8 * (2 * mt - nt) + mm;
                    if (d8 + 15 >= 0 && d8 - 7 <= Lt - 1)
                        mma16816(acc[2 * ml - nt + 7], a0, a1, a2, a3, b[nt][0], b[nt][1]);
                }
            }
        }
    }
    // lane e (0..22) gathers tap 8d + mm + e - 7 of each accumulator in a fixed order
#pragma unroll
    for (int j = 0; j < 10; ++j) {
        const int d8 = 8 * (d0 + j) + mm;
        // tiles (ml, nt = 2ml + 7 - j) that exist and overlap the taps
        const bool t0 = 7 - j >= 0 && 7 - j < NT && 2 * mp < MT, t1 = 9 - j >= 0 && 9 - j < NT && 2 * mp + 1 < MT;
        if (!((t0 || t1) && d8 + 15 >= 0 && d8 - 7 <= Lt - 1)) continue;
        __syncwarp();
#pragma unroll
        for (int q = 0; q < 4; ++q) scr[q * 32 + lane] = acc[j][q];
        __syncwarp();
        if (lane < 23) {
            const int e = lane - 7, t = d8 + e;
            if (t >= 0 && t < Lt) {
                float sum = 0.f;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int off = q == 0 ? 0 : (q == 1 ? -1 : (q == 2 ? 8 : 7));
#pragma unroll
                    for (int t4 = 0; t4 < 4; ++t4) {
                        const int gg = e - off + 2 * t4;
                        if (gg >= 0 && gg < 8) sum += scr[q * 32 + gg * 4 + t4];
                    }
                }
                tap[t] += sum;
            }
        }
    }
    __syncwarp();
}

__device__ __forceinline__ void dwpass(float* tap, float* scr, const u16* A, int ASR, int ASP, int Mext,
                                       const u16* Bm, int BSR, int BSP, int Next, int Kext, int mp, int p0, int p1,
                                       int shift, int Lt, int mm, const u16* zl) {
#define DWPASS_CASE(n) \
    case n: dwpass_nt<n>(tap, scr, A, ASR, ASP, Mext, Bm, BSR, BSP, Next, Kext, mp, p0, p1, shift, Lt, mm, zl); break;
    switch ((Next + 7) >> 3) {
        DWPASS_CASE(1) DWPASS_CASE(2) DWPASS_CASE(3) DWPASS_CASE(4) DWPASS_CASE(5) DWPASS_CASE(6) DWPASS_CASE(7)
        default: dwpass_nt<8>(tap, scr, A, ASR, ASP, Mext, Bm, BSR, BSP, Next, Kext, mp, p0, p1, shift, Lt, mm, zl);
    }
#undef DWPASS_CASE
}

// grad_x (written once per element) and per-block cross-kernel gradients
// part[by][c][3][KS][L] (0: wh, 1: wv, 2: wi in the first KS taps); swc_cross_grad sums them over by.
extern "C" __global__ void __launch_bounds__(NTHR, BWD_MINB)
swc_tc_bwd(const u16* __restrict__ x, const u16* __restrict__ g_h, const u16* __restrict__ g_v,
           const u16* __restrict__ g_i, const frag2* __restrict__ btab, u16* __restrict__ grad_x,
           float* __restrict__ part, int B, int C, int H, int W, int nk, int m, int P, int vec) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int L = nk * KS, c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int SRh = H + 2 * RS, SPh = pitch_of(W), SRv = W + 2 * RS, SPv = pitch_of(H);
    const int mf = L - 1 - m;  // left extent of the flipped long kernels
    const int NPASS = 3 * KS;

    unsigned char* ptr = smem;
    const CrossHead hd = carve_head(ptr, L, mf, SPh, SPv, false);
    float* scr = (float*)ptr;  // [NWARP][4][32]
    ptr += NWARP * 128 * 4;
    float* sgx = (float*)ptr;  // [P][H][W] vertical part of grad_x
    ptr += r16(P * H * W * 4);
    float* tapb = (float*)ptr;  // [NWARP][3*KS][L]
    ptr += r16(NWARP * NPASS * L * 4);
    unsigned char* zero_from = ptr;
    u16* sx = (u16*)ptr;
    ptr += P * SRh * SPh * 2;
    u16* sgh = (u16*)ptr;
    ptr += P * SRh * SPh * 2;
    u16* sgi = (u16*)ptr;
    ptr += P * SRh * SPh * 2;
    u16* sxt = (u16*)ptr;
    ptr += P * SRv * SPv * 2;
    u16* sgvt = (u16*)ptr;
    ptr += P * SRv * SPv * 2;

    zero_smem(tapb, r16(NWARP * NPASS * L * 4));
    zero_smem(zero_from, (int)(ptr - zero_from));
    load_head(hd, btab, c);
    {
        const u16* const src[4] = {x, g_h, g_i, g_v};
        u16* const rows[4] = {sx, sgh, sgi, nullptr};
        u16* const cols[4] = {sxt, nullptr, nullptr, sgvt};
        stage<4, 4>(src, rows, cols, b0, np, C, c, H, W, vec);
    }
    __syncthreads();

    const int MH = (np * H + 15) >> 4, MV = (np * W + 15) >> 4;
    // cross-kernel gradient items: (pass, row-tile pair, image chunk), about three per warp
    const int MTW = (W + 31) >> 5, MTH = (H + 31) >> 5;  // pairs of 16-row tiles
    const int NT1 = KS * (2 * MTW + MTH);  // (pass, tile pair) items: wh and wi tile W, wv tiles H
    const int NCH = max(1, min(np, (3 * NWARP + NT1 - 1) / NT1));
    const int NDW = NT1 * NCH;
    float acc[8][4];
    float* mytap = tapb + warp * NPASS * L;
    float* myscr = scr + warp * 128;
    // phase 1: vertical part of grad_x (transposed planes) -> sgx; cross-kernel gradients
    for (int it = warp; it < MV + NDW; it += NWARP) {
        if (it < MV) {
            zero_acc(acc);
            tpass(acc, sgvt, SRv, SPv, W, np * W, H, it, hd.tV, hd.dmH, hd.ndH, hd.zl);
            const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int R = it * 16 + g + half * 8;
                if (R >= np * W) continue;
                const int p = R / W, i = R - p * W;
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int col = nt * 8 + 2 * t4;
                    if (col < H) sgx[(p * H + col) * W + i] = acc[nt][2 * half];
                    if (col + 1 < H) sgx[(p * H + col + 1) * W + i] = acc[nt][2 * half + 1];
                }
            }
        } else {
            const int q = it - MV, pt = q / NCH, ch = q - pt * NCH;
            const int p0 = ch * np / NCH, p1 = (ch + 1) * np / NCH;
            const int per_u = 2 * MTW + MTH, u = pt / per_u;
            int r = pt - u * per_u;
            // wh: D[w', w] = sum_h x[h][w'] gH[h - u + RS][w], t = w' - w + m
            // wv: D[h', h] = sum_w x[h'][w] gV[h][w - v + RS], t = h' - h + m
            // wi: D[w', w] = sum_h x[h][w'] gI[h - u + RS][w], v = w' - w + RS
            // one dwpass call site: each instantiates dwpass_nt eight times, and with three (and
            // two tpass sites in phase 2) the backward hit its 128-register cap and spilled 8 bytes
            const int pass = r < MTW ? 0 : (r < MTW + MTH ? 1 : 2);
            r -= pass == 0 ? 0 : (pass == 1 ? MTW : MTW + MTH);
            const bool v = pass == 1;
            dwpass(mytap + (pass * KS + u) * L, myscr, v ? sx : sxt, v ? SRh : SRv, v ? SPh : SPv, v ? H : W,
                   pass == 0 ? sgh : (v ? sgvt : sgi), v ? SRv : SRh, v ? SPv : SPh, v ? H : W, v ? W : H, r, p0, p1,
                   u, pass == 2 ? KS : L, pass == 2 ? RS : m, hd.zl);
        }
    }
    __syncthreads();
    // phase 2: horizontal + identity parts of grad_x, plus the vertical part from sgx
    for (int it = warp; it < MH; it += NWARP) {
        zero_acc(acc);
#pragma unroll 1
        for (int pass = 0; pass < 2; ++pass)  // horizontal, identity: one call site
            tpass(acc, pass ? sgi : sgh, SRh, SPh, H, np * H, W, it, pass ? hd.tI : hd.tH, pass ? hd.dmI : hd.dmH,
                  pass ? hd.ndI : hd.ndH, hd.zl);
        store_tile(acc, grad_x, sgx, b0, C, c, H, W, H, np * H, W, it, false);
    }
    // cross-kernel gradient partial of this block: fixed-order sum over warps
    float* dst = part + ((long long)blockIdx.y * C + c) * NPASS * L;
    for (int e = threadIdx.x; e < NPASS * L; e += NTHR) {
        float s = 0.f;
        for (int wi_ = 0; wi_ < NWARP; ++wi_) s += tapb[wi_ * NPASS * L + e];
        dst[e] = s;
    }
}
