// Shift-wise operator (SPEC §1.6), fused forward and backward. Compiled at run time by NVRTC
// through cupy.RawModule (src/swconv/ops/cuda.py). Index math, launch layout and the determinism
// argument: kernels/README.md.
//
// Compile-time parameters (passed as -D options):
//   DT   storage dtype: 0 float32, 1 float16, 2 bfloat16, 3 float64 (float64 accumulates in double,
//        the others in float32)
//   KS   small kernel size k (odd)
//   PPT  output pixels owned by one thread (register accumulators)
//   LB   __launch_bounds__ maximum threads per block
// Header-free on purpose: half / bfloat16 conversions are written out, so NVRTC needs no CUDA
// include path (the CPU CI compiles this file to PTX for sm_80 and sm_90).

#ifndef DT
#define DT 0
#endif
#ifndef KS
#define KS 3
#endif
#ifndef PPT
#define PPT 8
#endif
#ifndef LB
#define LB 512
#endif

#define RS (KS / 2)
#define KK (KS * KS)

#if DT == 3
typedef double acc_t;
typedef double io_t;
__device__ __forceinline__ acc_t ld_io(const io_t* p, long long i) { return p[i]; }
__device__ __forceinline__ void st_io(io_t* p, long long i, acc_t v) { p[i] = v; }
#elif DT == 0
typedef float acc_t;
typedef float io_t;
__device__ __forceinline__ acc_t ld_io(const io_t* p, long long i) { return p[i]; }
__device__ __forceinline__ void st_io(io_t* p, long long i, acc_t v) { p[i] = v; }
#elif DT == 1
typedef float acc_t;
typedef unsigned short io_t;
__device__ __forceinline__ acc_t ld_io(const io_t* p, long long i) {
    unsigned short h = p[i];
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ void st_io(io_t* p, long long i, acc_t v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i] = h;
}
#elif DT == 2
typedef float acc_t;
typedef unsigned short io_t;
__device__ __forceinline__ acc_t ld_io(const io_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st_io(io_t* p, long long i, acc_t v) {
    unsigned int u = __float_as_uint(v);
    unsigned short h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h = (unsigned short)((u >> 16) | 0x0040u);  // quiet NaN, sign kept
    } else {
        h = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
    }
    p[i] = h;
}
#else
#error "DT must be 0 (f32), 1 (f16), 2 (bf16) or 3 (f64)"
#endif

// Shared-memory layout common to both kernels (dynamic, in this order):
//   acc_t s_w[nk*KK]          compacted active kernels of channel c
//   acc_t s_x[P*XH*XW]        P input planes, zero halo of 2*RS
//   ... kernel-specific acc_t arrays ...
//   int   s_oh[nk*nrep], s_ov[nk*nrep], s_id[nk], s_list[nk]

// Compacts the active kernels of channel c and stages weights and tables. Returns the count.
__device__ __forceinline__ int stage_tables(int c, int nk, int nrep, const acc_t* __restrict__ w,
                                            const int* __restrict__ offh, const int* __restrict__ offv,
                                            const int* __restrict__ idc, const unsigned char* __restrict__ active,
                                            acc_t* s_w, int* s_oh, int* s_ov, int* s_id, int* s_list, int* s_n) {
    const int tid = threadIdx.x, NT = blockDim.x;
    if (tid == 0) {
        int n = 0;
        for (int j = 0; j < nk; ++j)
            if (active[c * nk + j]) s_list[n++] = j;
        *s_n = n;
    }
    __syncthreads();
    const int n = *s_n;
    for (int t = tid; t < n * KK; t += NT) {
        const int i = t / KK, e = t - i * KK;
        s_w[t] = w[(long long)(c * nk + s_list[i]) * KK + e];
    }
    for (int t = tid; t < n * nrep; t += NT) {
        const int i = t / nrep, g = t - i * nrep;
        const long long src = (long long)(c * nk + s_list[i]) * nrep + g;
        s_oh[t] = offh[src];
        s_ov[t] = offv[src];
    }
    for (int t = tid; t < n; t += NT) s_id[t] = idc[c * nk + s_list[t]];
    return n;
}

__device__ __forceinline__ void stage_x(const io_t* __restrict__ x, acc_t* s_x, int b0, int np, int P, int C, int c,
                                        int H, int W) {
    const int XH = H + 4 * RS, XW = W + 4 * RS, XHW = XH * XW, HW = H * W;
    for (int t = threadIdx.x; t < P * XHW; t += blockDim.x) {
        const int p = t / XHW, e = t - p * XHW;
        const int yy = e / XW - 2 * RS, xx = e % XW - 2 * RS;
        acc_t v = 0;
        if (p < np && yy >= 0 && yy < H && xx >= 0 && xx < W)
            v = ld_io(x, ((long long)(b0 + p) * C + c) * HW + yy * W + xx);
        s_x[t] = v;
    }
}

// Forward. Grid (C, ceil(B/P)); block NT threads (multiple of 32, NT*PPT >= P*H*W).
// Block (c, by) owns the planes b = by*P .. by*P+P-1 of channel c.
extern "C" __global__ void __launch_bounds__(LB)
swc_fwd(const io_t* __restrict__ x, const acc_t* __restrict__ w, const int* __restrict__ offh,
        const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
        io_t* __restrict__ out_h, io_t* __restrict__ out_v, io_t* __restrict__ out_i, int B, int C, int H, int W,
        int nk, int nrep, int P, int CH) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P;
    const int np = min(P, B - b0);
    const int EH = H + 2 * RS, EW = W + 2 * RS, XH = H + 4 * RS, XW = W + 4 * RS;
    const int HW = H * W, EHW = EH * EW, XHW = XH * XW, PE = P * EHW;
    const int tid = threadIdx.x, NT = blockDim.x;

    acc_t* s_w = (acc_t*)smem_raw;
    acc_t* s_x = s_w + nk * KK;
    acc_t* s_z = s_x + P * XHW;
    int* s_oh = (int*)(s_z + CH * PE);
    int* s_ov = s_oh + nk * nrep;
    int* s_id = s_ov + nk * nrep;
    int* s_list = s_id + nk;

    const int n = stage_tables(c, nk, nrep, w, offh, offv, idc, active, s_w, s_oh, s_ov, s_id, s_list, &s_n);
    stage_x(x, s_x, b0, np, P, C, c, H, W);

    int zb[PPT], hw[PPT];
    acc_t aH[PPT], aV[PPT], aI[PPT];
#pragma unroll
    for (int i = 0; i < PPT; ++i) {
        const int idx = tid + i * NT;
        aH[i] = 0; aV[i] = 0; aI[i] = 0;
        if (idx < np * HW) {
            const int p = idx / HW, e = idx - p * HW, h = e / W, ww = e - h * W;
            zb[i] = p * EHW + (h + RS) * EW + ww + RS;
            hw[i] = (h << 16) | ww;
        } else {
            zb[i] = -1; hw[i] = 0;
        }
    }
    __syncthreads();

    for (int c0 = 0; c0 < n; c0 += CH) {
        const int cn = min(CH, n - c0);
        // 1. small-kernel responses Z_j on the full support [-RS, H-1+RS] x [-RS, W-1+RS]
        for (int t = tid; t < cn * PE; t += NT) {
            const int jj = t / PE, e = t - jj * PE;
            const int p = e / EHW, e2 = e - p * EHW;
            const int eh = e2 / EW, ew = e2 - eh * EW;
            const acc_t* xp = s_x + p * XHW + eh * XW + ew;
            const acc_t* wp = s_w + (c0 + jj) * KK;
            acc_t z = 0;
#pragma unroll
            for (int a = 0; a < KS; ++a)
#pragma unroll
                for (int bb = 0; bb < KS; ++bb) z += wp[a * KS + bb] * xp[a * XW + bb];
            s_z[t] = z;
        }
        __syncthreads();
        // 2. gather: every output pixel pulls its slots from the chunk (fixed order j, g)
        for (int jj = 0; jj < cn; ++jj) {
            const int gi = c0 + jj;
            const acc_t* zj = s_z + jj * PE;
            for (int g = 0; g < nrep; ++g) {
                const int dh = s_oh[gi * nrep + g], dv = s_ov[gi * nrep + g];
#pragma unroll
                for (int i = 0; i < PPT; ++i) {
                    if (zb[i] >= 0) {
                        const int h = hw[i] >> 16, ww = hw[i] & 0xffff;
                        const int col = ww + dh, row = h + dv;
                        if (col >= -RS && col < W + RS) aH[i] += zj[zb[i] + dh];
                        if (row >= -RS && row < H + RS) aV[i] += zj[zb[i] + dv * EW];
                    }
                }
            }
            const int ic = s_id[gi];
            if (ic) {
                const acc_t fic = (acc_t)ic;
#pragma unroll
                for (int i = 0; i < PPT; ++i)
                    if (zb[i] >= 0) aI[i] += fic * zj[zb[i]];
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < PPT; ++i) {
        const int idx = tid + i * NT;
        if (idx < np * HW) {
            const int p = idx / HW, e = idx - p * HW;
            const long long o = ((long long)(b0 + p) * C + c) * HW + e;
            st_io(out_h, o, aH[i]);
            st_io(out_v, o, aV[i]);
            st_io(out_i, o, aI[i]);
        }
    }
}

// Backward. Same grid and block as the forward.
//   grad_x  (B, C, H, W) storage dtype, written once per element
//   gw_part (gridDim.y, C, nk, KK) acc dtype: per-block partial sums of the weight gradient of
//           the active kernels (inactive entries written as 0, so no zero-fill launch), summed
//           over dim 0 by the caller in a fixed order.
extern "C" __global__ void __launch_bounds__(LB)
swc_bwd(const io_t* __restrict__ x, const io_t* __restrict__ g_h, const io_t* __restrict__ g_v,
        const io_t* __restrict__ g_i, const acc_t* __restrict__ w, const int* __restrict__ offh,
        const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
        io_t* __restrict__ grad_x, acc_t* __restrict__ gw_part, int B, int C, int H, int W, int nk, int nrep, int P,
        int CH) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P;
    const int np = min(P, B - b0);
    const int EH = H + 2 * RS, EW = W + 2 * RS, XH = H + 4 * RS, XW = W + 4 * RS;
    const int HW = H * W, EHW = EH * EW, XHW = XH * XW, PE = P * EHW, PHW = P * HW;
    const int tid = threadIdx.x, NT = blockDim.x, NWARP = NT >> 5, lane = tid & 31, warp = tid >> 5;

    acc_t* s_w = (acc_t*)smem_raw;
    acc_t* s_x = s_w + nk * KK;
    acc_t* s_g = s_x + P * XHW;        // [3][P][HW]: grad of out_h, out_v, out_i
    acc_t* s_z = s_g + 3 * PHW;        // [CH][P][EHW]: grad of Z_j
    acc_t* s_red = s_z + CH * PE;      // [CH][NWARP][KK]
    int* s_oh = (int*)(s_red + CH * NWARP * KK);
    int* s_ov = s_oh + nk * nrep;
    int* s_id = s_ov + nk * nrep;
    int* s_list = s_id + nk;

    for (int t = tid; t < nk * KK; t += NT)
        if (!active[c * nk + t / KK]) gw_part[((long long)blockIdx.y * C + c) * nk * KK + t] = 0;
    const int n = stage_tables(c, nk, nrep, w, offh, offv, idc, active, s_w, s_oh, s_ov, s_id, s_list, &s_n);
    stage_x(x, s_x, b0, np, P, C, c, H, W);
    for (int t = tid; t < 3 * PHW; t += NT) {
        const int which = t / PHW, e = t - which * PHW;
        const int p = e / HW, e2 = e - p * HW;
        const io_t* src = which == 0 ? g_h : (which == 1 ? g_v : g_i);
        acc_t v = 0;
        if (p < np) v = ld_io(src, ((long long)(b0 + p) * C + c) * HW + e2);
        s_g[t] = v;
    }

    int gb[PPT];
    acc_t ax[PPT];
#pragma unroll
    for (int i = 0; i < PPT; ++i) {
        const int idx = tid + i * NT;
        ax[i] = 0;
        if (idx < np * HW) {
            const int p = idx / HW, e = idx - p * HW, h = e / W, ww = e - h * W;
            gb[i] = p * EHW + (h + 2 * RS) * EW + ww + 2 * RS;
        } else {
            gb[i] = -1;
        }
    }
    __syncthreads();

    for (int c0 = 0; c0 < n; c0 += CH) {
        const int cn = min(CH, n - c0);
        // 1. grad of Z_j on its support (transpose of the forward gather) + weight-grad partials
        for (int jj = 0; jj < cn; ++jj) {
            const int gi = c0 + jj;
            const int ic = s_id[gi];
            acc_t gw[KK];
#pragma unroll
            for (int q = 0; q < KK; ++q) gw[q] = 0;
            for (int t = tid; t < PE; t += NT) {
                const int p = t / EHW, e = t - p * EHW;
                const int eh = e / EW, ew = e - eh * EW;
                const int h = eh - RS, ww = ew - RS;
                const bool hin = h >= 0 && h < H, win = ww >= 0 && ww < W;
                const acc_t* gH = s_g + p * HW;
                const acc_t* gV = gH + PHW;
                const acc_t* gI = gV + PHW;
                acc_t v = 0;
                if (hin) {
                    for (int g = 0; g < nrep; ++g) {
                        const int col = ww - s_oh[gi * nrep + g];
                        if (col >= 0 && col < W) v += gH[h * W + col];
                    }
                }
                if (win) {
                    for (int g = 0; g < nrep; ++g) {
                        const int row = h - s_ov[gi * nrep + g];
                        if (row >= 0 && row < H) v += gV[row * W + ww];
                    }
                }
                if (hin && win && ic) v += (acc_t)ic * gI[h * W + ww];
                s_z[jj * PE + t] = v;
                const acc_t* xp = s_x + p * XHW + eh * XW + ew;
#pragma unroll
                for (int a = 0; a < KS; ++a)
#pragma unroll
                    for (int bb = 0; bb < KS; ++bb) gw[a * KS + bb] += v * xp[a * XW + bb];
            }
#pragma unroll
            for (int q = 0; q < KK; ++q) {
                acc_t s = gw[q];
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
                if (lane == 0) s_red[(jj * NWARP + warp) * KK + q] = s;
            }
        }
        __syncthreads();
        // 2. weight-grad partial of this block: fixed-order sum over warps
        for (int t = tid; t < cn * KK; t += NT) {
            const int jj = t / KK, q = t - jj * KK;
            acc_t s = 0;
            for (int wi = 0; wi < NWARP; ++wi) s += s_red[(jj * NWARP + wi) * KK + q];
            gw_part[((long long)blockIdx.y * C + c) * nk * KK + (long long)s_list[c0 + jj] * KK + q] = s;
        }
        // 3. grad_x: full correlation of grad Z_j with W_j (flipped taps)
        for (int jj = 0; jj < cn; ++jj) {
            const acc_t* wp = s_w + (c0 + jj) * KK;
            const acc_t* zj = s_z + jj * PE;
#pragma unroll
            for (int a = 0; a < KS; ++a)
#pragma unroll
                for (int bb = 0; bb < KS; ++bb) {
                    const acc_t wv = wp[a * KS + bb];
                    const int d = a * EW + bb;
#pragma unroll
                    for (int i = 0; i < PPT; ++i)
                        if (gb[i] >= 0) ax[i] += wv * zj[gb[i] - d];
                }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < PPT; ++i) {
        const int idx = tid + i * NT;
        if (idx < np * HW) {
            const int p = idx / HW, e = idx - p * HW;
            st_io(grad_x, ((long long)(b0 + p) * C + c) * HW + e, ax[i]);
        }
    }
}
