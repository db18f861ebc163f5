// Shift-wise operator (SPEC §1.6), fused forward and backward, register-strip version (v2).
// Compiled at run time by NVRTC through cupy.RawModule (src/swconv/ops/cuda.py). Index math,
// launch layout and the determinism argument: kernels/README.md.
//
// Compile-time parameters (-D):
//   DT   storage dtype: 0 float32, 1 float16, 2 bfloat16, 3 float64 (fp64 accumulation; else fp32)
//   KS   small kernel size k (odd)
//   PPT  rows per thread strip (a thread owns PPT vertically adjacent pixels of one column)
//   ZP   row pitch (elements) of the staged Z / gradient planes, >= W + 2*(KS/2)
//   LB   __launch_bounds__ maximum threads per block; MINB minimum resident blocks
// Header-free: half / bfloat16 conversions are written out (NVRTC needs no include path).

#ifndef DT
#define DT 0
#endif
#ifndef KS
#define KS 3
#endif
#ifndef PPT
#define PPT 8
#endif
#ifndef ZP
#define ZP 64
#endif
#ifndef LB
#define LB 512
#endif
#ifndef MINB
#define MINB 1
#endif

#define RS (KS / 2)
#define KK (KS * KS)
#define XP (ZP + 2 * RS)   // row pitch of the staged input planes
#define WR (PPT + KS - 1)  // rows of a register window

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

// Geometry shared by both kernels (runtime, per launch):
//   EH = H + 2RS, EW = W + 2RS        full support of a response Z_j ("ext" domain)
//   NHB = ceil(H / PPT)               output strips per column
//   NZB = ceil(EH / PPT)              ext strips per column
//   ZR  = rows of a staged Z plane    = max(NZB*PPT, NHB*PPT + 2RS); ext row eh at row eh
//   XR  = ZR + 2RS rows of a staged x plane; x plane row y = image row y - 2RS, col = image col - 2RS
// Z plane element (eh, ew) sits at eh*ZP + ew.

// Warp 0 compacts the active kernels of channel c (ballot + popc: one coalesced load, ascending
// order, deterministic). Other warps go on staging planes meanwhile; callers sync before use.
__device__ __forceinline__ void compact_active(int c, int nk, const unsigned char* __restrict__ active, int* s_list,
                                               int* s_n) {
    const int tid = threadIdx.x;
    if (tid < 32) {
        int n = 0;
        for (int base = 0; base < nk; base += 32) {
            const int j = base + tid;
            const bool a = j < nk && active[c * nk + j];
            const unsigned int m = __ballot_sync(0xffffffffu, a);
            if (a) s_list[n + __popc(m & ((1u << tid) - 1u))] = j;
            n += __popc(m);
        }
        if (tid == 0) *s_n = n;
    }
}

// Stages weights and offset tables of the n compacted kernels (after a barrier following
// compact_active); callers sync before use.
__device__ __forceinline__ void stage_tables(int c, int nk, int nrep, int n, const acc_t* __restrict__ w,
                                             const int* __restrict__ offh, const int* __restrict__ offv,
                                             const int* __restrict__ idc, acc_t* s_w, int* s_oh, int* s_ov,
                                             int* s_id, const int* s_list) {
    const int tid = threadIdx.x, NT = blockDim.x;
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
}

// Zero-fills n staged elements; callers sync before copy_planes writes the image pixels.
__device__ __forceinline__ void zero_fill(acc_t* dst, int n) {
    for (int t = threadIdx.x; t < n; t += blockDim.x) dst[t] = 0;
}

// Copies the np images (channel c, images b0..) into zero-filled staged planes: pixel (y, x) of
// image p goes to dst[(p * rows + y + off) * pitch + x + off]. Flat over the image pixels only
// (coalesced loads, no halo predicates); a thread's position advances by blockDim.x with carries
// instead of a division per element, and four loads are issued before their stores.
__device__ __forceinline__ void copy_planes(const io_t* __restrict__ src, acc_t* dst, int b0, int np, int C, int c,
                                            int H, int W, int rows, int pitch, int off) {
    const int NT = blockDim.x, HW = H * W, n = np * HW;
    int i = threadIdx.x;
    if (i >= n) return;
    int p = i / HW, e = i - p * HW;
    int y = e / W, x = e - y * W;
    const int dp = NT / HW, de = NT - dp * HW, dy = de / W, dx = de - dy * W;
    const long long pstride = (long long)C * HW;
    const io_t* base = src + ((long long)b0 * C + c) * HW;
    while (i < n) {
        acc_t v[4];
        int d[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            d[u] = -1;
            if (i < n) {
                v[u] = ld_io(base + p * pstride, y * W + x);
                d[u] = (p * rows + y + off) * pitch + x + off;
            }
            i += NT;
            x += dx;
            if (x >= W) { x -= W; ++y; }
            y += dy;
            if (y >= H) { y -= H; ++p; }
            p += dp;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u)
            if (d[u] >= 0) dst[d[u]] = v[u];
    }
}

// Strip t of n_img images, each split into cols columns of nstrips vertical strips of PPT rows:
// image p, first row row0, column col. False (outputs untouched) when t is past the last strip.
__device__ __forceinline__ bool column_strip(int t, int n_img, int cols, int nstrips, int& p, int& row0, int& col) {
    if (t >= n_img * cols * nstrips) return false;
    p = t / (cols * nstrips);
    const int rem = t - p * cols * nstrips;
    row0 = (rem / cols) * PPT;
    col = rem - (rem / cols) * cols;
    return true;
}

// The input window of a response strip: WR rows x KS columns from the staged plane at xp.
__device__ __forceinline__ void load_window(const acc_t* xp, acc_t (&xv)[WR][KS]) {
#pragma unroll
    for (int a = 0; a < WR; ++a)
#pragma unroll
        for (int bb = 0; bb < KS; ++bb) xv[a][bb] = xp[a * XP + bb];
}

// PPT responses of small kernel wp over the window xv, stored down a column at zp (row pitch ZP).
__device__ __forceinline__ void strip_response(const acc_t* wp, const acc_t (&xv)[WR][KS], acc_t* zp) {
    acc_t wr[KK];
#pragma unroll
    for (int q = 0; q < KK; ++q) wr[q] = wp[q];
#pragma unroll
    for (int i = 0; i < PPT; ++i) {
        acc_t z = 0;
#pragma unroll
        for (int a = 0; a < KS; ++a)
#pragma unroll
            for (int bb = 0; bb < KS; ++bb) z += wr[a * KS + bb] * xv[i + a][bb];
        zp[i * ZP] = z;
    }
}

// Writes the three branch sums of an output strip: rows h0.. (those < H) of the column at o0.
__device__ __forceinline__ void store_branches(io_t* out_h, io_t* out_v, io_t* out_i, long long o0, int h0, int H,
                                               int W, const acc_t (&aH)[PPT], const acc_t (&aV)[PPT],
                                               const acc_t (&aI)[PPT]) {
#pragma unroll
    for (int i = 0; i < PPT; ++i) {
        if (h0 + i < H) {
            const long long o = o0 + (long long)(h0 + i) * W;
            st_io(out_h, o, aH[i]);
            st_io(out_v, o, aV[i]);
            st_io(out_i, o, aI[i]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(LB, MINB)
swc_fwd(const io_t* __restrict__ x, const acc_t* __restrict__ w, const int* __restrict__ offh,
        const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
        io_t* __restrict__ out_h, io_t* __restrict__ out_v, io_t* __restrict__ out_i, int B, int C, int H, int W,
        int nk, int nrep, int P, int CH, int ZR) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P;
    const int np = min(P, B - b0);
    const int EH = H + 2 * RS, EW = W + 2 * RS;
    const int NHB = (H + PPT - 1) / PPT, NZB = (EH + PPT - 1) / PPT;
    const int XR = ZR + 2 * RS, XPL = XR * XP, ZPL = ZR * ZP, PZ = P * ZPL;
    const int tid = threadIdx.x, NT = blockDim.x;

    acc_t* s_w = (acc_t*)smem_raw;
    acc_t* s_x = s_w + nk * KK;
    acc_t* s_z = s_x + P * XPL;
    int* s_oh = (int*)(s_z + CH * PZ);
    int* s_ov = s_oh + nk * nrep;
    int* s_id = s_ov + nk * nrep;
    int* s_list = s_id + nk;

    compact_active(c, nk, active, s_list, &s_n);
    zero_fill(s_x, P * XPL);
    __syncthreads();
    const int n = s_n;
    stage_tables(c, nk, nrep, n, w, offh, offv, idc, s_w, s_oh, s_ov, s_id, s_list);
    copy_planes(x, s_x, b0, np, C, c, H, W, XR, XP, 2 * RS);

    // output strip owned by this thread: plane op, column ow, rows oh0 .. oh0+PPT-1
    int op = 0, ow = 0, oh0 = 0;
    const bool own = column_strip(tid, np, W, NHB, op, oh0, ow);
    const int obase = op * ZPL + (oh0 + RS) * ZP + ow + RS;
    acc_t aH[PPT], aV[PPT], aI[PPT];
#pragma unroll
    for (int i = 0; i < PPT; ++i) { aH[i] = 0; aV[i] = 0; aI[i] = 0; }
    const int nZseg = P * EW * NZB;
    __syncthreads();

    for (int c0 = 0; c0 < n; c0 += CH) {
        const int cn = min(CH, n - c0);
        // 1. responses Z_j of the chunk: thread strip of PPT ext rows in one ext column
        for (int seg = tid; seg < nZseg; seg += NT) {
            int p = 0, eh0 = 0, ew = 0;
            column_strip(seg, P, EW, NZB, p, eh0, ew);
            acc_t xv[WR][KS];
            load_window(s_x + p * XPL + eh0 * XP + ew, xv);
            acc_t* zp = s_z + p * ZPL + eh0 * ZP + ew;
            for (int jj = 0; jj < cn; ++jj) strip_response(s_w + (c0 + jj) * KK, xv, zp + jj * PZ);
        }
        __syncthreads();
        // 2. gather into the owned strip (fixed order: kernel, group)
        if (own) {
            for (int jj = 0; jj < cn; ++jj) {
                const int gi = c0 + jj;
                const acc_t* zj = s_z + jj * PZ + obase;
                for (int g = 0; g < nrep; ++g) {
                    const int dh = s_oh[gi * nrep + g], dv = s_ov[gi * nrep + g];
                    const int col = ow + dh;
                    if (col >= -RS && col < W + RS) {  // uniform over the strip
                        const acc_t* zp = zj + dh;
#pragma unroll
                        for (int i = 0; i < PPT; ++i) aH[i] += zp[i * ZP];
                    }
                    const acc_t* zq = zj + dv * ZP;
                    if (oh0 + dv >= -RS && oh0 + PPT - 1 + dv < H + RS) {
#pragma unroll
                        for (int i = 0; i < PPT; ++i) aV[i] += zq[i * ZP];
                    } else {
#pragma unroll
                        for (int i = 0; i < PPT; ++i) {
                            const int row = oh0 + i + dv;
                            if (row >= -RS && row < H + RS) aV[i] += zq[i * ZP];
                        }
                    }
                }
                const int ic = s_id[gi];
                if (ic) {
                    const acc_t fic = (acc_t)ic;
#pragma unroll
                    for (int i = 0; i < PPT; ++i) aI[i] += fic * zj[i * ZP];
                }
            }
        }
        __syncthreads();
    }

    if (own) store_branches(out_h, out_v, out_i, ((long long)(b0 + op) * C + c) * H * W + ow, oh0, H, W, aH, aV, aI);
}

// Backward: grad_x (written once per element) and per-block weight-gradient partials
// gw_part (gridDim.y, C, nk, KK), reduced in a fixed order (warp butterfly, then warps in order);
// inactive kernels' entries are written as 0 here (no zero-fill launch); the caller sums over dim 0.
extern "C" __global__ void __launch_bounds__(LB, MINB)
swc_bwd(const io_t* __restrict__ x, const io_t* __restrict__ g_h, const io_t* __restrict__ g_v,
        const io_t* __restrict__ g_i, const acc_t* __restrict__ w, const int* __restrict__ offh,
        const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
        io_t* __restrict__ grad_x, acc_t* __restrict__ gw_part, int B, int C, int H, int W, int nk, int nrep, int P,
        int CH, int ZR) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P;
    const int np = min(P, B - b0);
    const int EH = H + 2 * RS, EW = W + 2 * RS;
    const int NHB = (H + PPT - 1) / PPT, NZB = (EH + PPT - 1) / PPT;
    const int XR = ZR + 2 * RS, XPL = XR * XP, ZPL = ZR * ZP, PZ = P * ZPL, HW = H * W;
    const int tid = threadIdx.x, NT = blockDim.x, NWARP = NT >> 5, lane = tid & 31, warp = tid >> 5;

    acc_t* s_w = (acc_t*)smem_raw;
    acc_t* s_x = s_w + nk * KK;
    acc_t* s_g = s_x + P * XPL;        // [3][P][ZR][ZP] grads of out_h/out_v/out_i in ext coordinates
    acc_t* s_z = s_g + 3 * PZ;         // [CH][P][ZR][ZP] grad of Z_j
    acc_t* s_red = s_z + CH * PZ;      // [CH][NWARP][KK]
    int* s_oh = (int*)(s_red + CH * NWARP * KK);
    int* s_ov = s_oh + nk * nrep;
    int* s_id = s_ov + nk * nrep;
    int* s_list = s_id + nk;

    for (int t = tid; t < nk * KK; t += NT)
        if (!active[c * nk + t / KK]) gw_part[((long long)blockIdx.y * C + c) * nk * KK + t] = 0;
    compact_active(c, nk, active, s_list, &s_n);
    zero_fill(s_x, P * XPL + 3 * PZ);  // s_x and s_g are contiguous
    __syncthreads();
    const int n = s_n;
    stage_tables(c, nk, nrep, n, w, offh, offv, idc, s_w, s_oh, s_ov, s_id, s_list);
    copy_planes(x, s_x, b0, np, C, c, H, W, XR, XP, 2 * RS);
    copy_planes(g_h, s_g, b0, np, C, c, H, W, ZR, ZP, RS);
    copy_planes(g_v, s_g + PZ, b0, np, C, c, H, W, ZR, ZP, RS);
    copy_planes(g_i, s_g + 2 * PZ, b0, np, C, c, H, W, ZR, ZP, RS);

    int op = 0, ow = 0, oh0 = 0;
    const bool own = column_strip(tid, np, W, NHB, op, oh0, ow);
    acc_t ax[PPT];
#pragma unroll
    for (int i = 0; i < PPT; ++i) ax[i] = 0;
    const int nZseg = P * EW * NZB;
    __syncthreads();

    for (int c0 = 0; c0 < n; c0 += CH) {
        const int cn = min(CH, n - c0);
        acc_t gw[KK];
        // 1. grad Z_j on the ext domain (transpose of the forward gather) + weight-grad partials.
        //    Thread strip: PPT ext rows (eh0..) of one ext column ew.
        for (int jj = 0; jj < cn; ++jj) {
            const int gi = c0 + jj;
            const int ic = s_id[gi];
#pragma unroll
            for (int q = 0; q < KK; ++q) gw[q] = 0;
            for (int seg = tid; seg < nZseg; seg += NT) {
                int p = 0, eh0 = 0, ew = 0;
                column_strip(seg, P, EW, NZB, p, eh0, ew);
                const int base = p * ZPL + eh0 * ZP + ew;
                const acc_t* gH = s_g + base;
                const acc_t* gV = gH + PZ;
                const acc_t* gI = gV + PZ;
                acc_t v[PPT];
#pragma unroll
                for (int i = 0; i < PPT; ++i) v[i] = 0;
                for (int g = 0; g < nrep; ++g) {
                    const int dh = s_oh[gi * nrep + g], dv = s_ov[gi * nrep + g];
                    const int col = ew - dh;  // ext column of the grad pixel
                    if (col >= RS && col < W + RS) {
#pragma unroll
                        for (int i = 0; i < PPT; ++i) v[i] += gH[i * ZP - dh];
                    }
                    const acc_t* gq = gV - dv * ZP;
                    if (eh0 - dv >= 0 && eh0 + PPT - 1 - dv < ZR) {
#pragma unroll
                        for (int i = 0; i < PPT; ++i) v[i] += gq[i * ZP];
                    } else {
#pragma unroll
                        for (int i = 0; i < PPT; ++i) {
                            const int row = eh0 + i - dv;
                            if (row >= 0 && row < ZR) v[i] += gq[i * ZP];
                        }
                    }
                }
                if (ic) {
                    const acc_t fic = (acc_t)ic;
#pragma unroll
                    for (int i = 0; i < PPT; ++i) v[i] += fic * gI[i * ZP];
                }
#pragma unroll
                for (int i = 0; i < PPT; ++i) {
                    if (eh0 + i >= EH) v[i] = 0;
                    s_z[jj * PZ + base + i * ZP] = v[i];
                }
                const acc_t* xp = s_x + p * XPL + eh0 * XP + ew;
#pragma unroll
                for (int bb = 0; bb < KS; ++bb) {
                    acc_t xc[WR];
#pragma unroll
                    for (int a = 0; a < WR; ++a) xc[a] = xp[a * XP + bb];
#pragma unroll
                    for (int a = 0; a < KS; ++a)
#pragma unroll
                        for (int i = 0; i < PPT; ++i) gw[a * KS + bb] += v[i] * xc[i + a];
                }
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
        // 3. grad_x of the owned strip: full correlation of grad Z_j with W_j
        if (own) {
            for (int jj = 0; jj < cn; ++jj) {
                const acc_t* wp = s_w + (c0 + jj) * KK;
                const acc_t* zp = s_z + jj * PZ + op * ZPL + oh0 * ZP + ow;  // window rows oh0.., cols ow..
#pragma unroll
                for (int bb = 0; bb < KS; ++bb) {
                    acc_t zc[WR];
#pragma unroll
                    for (int a = 0; a < WR; ++a) zc[a] = zp[a * ZP + bb];
#pragma unroll
                    for (int a = 0; a < KS; ++a) {
                        // ext row of tap (a, bb) for pixel i: oh0 + i + 2RS - a; col ow + 2RS - bb
                        const acc_t wv = wp[(KS - 1 - a) * KS + (KS - 1 - bb)];
#pragma unroll
                        for (int i = 0; i < PPT; ++i) ax[i] += wv * zc[i + a];
                    }
                }
            }
        }
        __syncthreads();
    }

    if (own) {
        const long long o0 = ((long long)(b0 + op) * C + c) * HW + ow;
#pragma unroll
        for (int i = 0; i < PPT; ++i)
            if (oh0 + i < H) st_io(grad_x, o0 + (long long)(oh0 + i) * W, ax[i]);
    }
}
