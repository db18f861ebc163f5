// Study, not a product kernel: a sparse forward whose gathers never touch shared memory, for the
// density figure of the CUDA op (kernels/README.md, "Density: the open figure").
// bench/sparse_reg_study.py compiles it per shape with NVRTC, checks it against the PyTorch oracle
// and times it against the default op.
//
// Per (channel, block of P images) a thread owns one column and one row of one image. For each
// active kernel j:
//   1. as column owner it computes the response Z_j down its column (rows [-RS, H + RS)) from the
//      staged fp32 input, in registers;
//   2. it adds the N_rep vertical shifts of that column to its V outputs, in registers: the shift
//      is a slot index read once per (kernel, group), and a `switch` jumps to straight-line code
//      compiled for that slot's offset, so the register indices are constants and the parts of the
//      column a shift moves off the plane are never added;
//   3. it stores the column's rows [0, H) to a shared plane (double-buffered: one barrier per kernel);
//   4. as row owner it reads its row of that plane, computes the 2 RS response values beyond the
//      plane's left and right edges itself, and adds the horizontal shifts the same way.
// The identity branch is the response of the folded identity kernel sum_g W_iota(g). No atomics;
// every sum has a fixed order. bf16 input and outputs, fp32 accumulation.
//
// Compile-time (-D, from the host): KS, H, W, P, NK, MM (= K / 2), NT (threads), XP / XS (pitch and
// image stride of the staged input), XTOT (its floats, a multiple of 4), ZP / ZS (of the response
// plane), ZV (its row loads' width), ZBT (floats of the two response buffers, a multiple of 4).
// Run-time: B, C, nrep (<= 4).
//   staged input (fp32): image p, row y, column x at p * XS + (y + 2 RS) * XP + x + 2 RS, zero
//   outside the image; rows [-2 RS, H + 2 RS), columns [-2 RS, W + 2 RS)

#define RS (KS / 2)
#define KK (KS * KS)
#define M_ (H > W ? H : W)  // threads per image: column i and row i
#define ZL (M_ + 2 * RS)    // a response line with its support beyond the plane

typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float bf16_f32(u16 v) { return __uint_as_float(((u32)v) << 16); }

__device__ __forceinline__ u16 f32_bf16(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// z[y + RS] = sum_{u, v} wk[u][v] x[y + u][i + v] for y in [-RS, LEN + RS): one line of a response,
// reading each input row of the line's KS columns once. xl points at x(0, i); `step` is the
// distance between input rows along the line.
template <int LEN>
__device__ __forceinline__ void line_response(float (&z)[ZL], const float* xl, int step, int across,
                                              const float (&wk)[KK]) {
#pragma unroll
    for (int t = 0; t < LEN + 2 * RS; ++t) z[t] = 0.f;
#pragma unroll
    for (int yy = -2 * RS; yy < LEN + 2 * RS; ++yy) {
        float xr[KS];
#pragma unroll
        for (int v = 0; v < KS; ++v) xr[v] = xl[yy * step + (v - RS) * across];
#pragma unroll
        for (int u = -RS; u <= RS; ++u) {
            const int y = yy - u;
            if (y >= -RS && y < LEN + RS) {
#pragma unroll
                for (int v = 0; v < KS; ++v) z[y + RS] = fmaf(wk[(u + RS) * KS + v], xr[v], z[y + RS]);
            }
        }
    }
}

// o[y] += z[y + D + RS] wherever y + D lies in the response's support [-RS, N + RS)
template <int N, int D>
__device__ __forceinline__ void shift_add(float (&o)[N], const float (&z)[ZL]) {
#pragma unroll
    for (int y = 0; y < N; ++y)
        if (y + D >= -RS && y + D < N + RS) o[y] += z[y + D + RS];
}

#define SLOT_OFFSET(s) ((s) * KS + RS - MM)
#define SLOT_CASE(S)                                                          \
    case S:                                                                   \
        if constexpr ((S) < NK) shift_add<N, SLOT_OFFSET(S)>(o, z);           \
        break;
#define SLOT_CASES4(b) SLOT_CASE(b) SLOT_CASE(b + 1) SLOT_CASE(b + 2) SLOT_CASE(b + 3)
#define SLOT_CASES16(b) SLOT_CASES4(b) SLOT_CASES4(b + 4) SLOT_CASES4(b + 8) SLOT_CASES4(b + 12)

// the shifted add of slot s (< 0: an unused group)
template <int N>
__device__ __forceinline__ void shift_add_slot(int s, float (&o)[N], const float (&z)[ZL]) {
    static_assert(NK <= 96, "more slots than cases");
    switch (s) {
        SLOT_CASES16(0)
        SLOT_CASES16(16)
        SLOT_CASES16(32)
        SLOT_CASES16(48)
        SLOT_CASES16(64)
        SLOT_CASES16(80)
        default:
            break;
    }
}

template <int N>
__device__ __forceinline__ void store_line(u16* out, int stride, const float (&v)[N]) {
#pragma unroll
    for (int y = 0; y < N; ++y) out[y * stride] = f32_bf16(v[y]);
}

extern "C" __global__ void __launch_bounds__(NT, 1)
study_reg_fwd(const u16* __restrict__ x, const float* __restrict__ w, const int* __restrict__ offh,
              const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
              u16* __restrict__ out_h, u16* __restrict__ out_v, u16* __restrict__ out_i, int B, int C, int nrep) {
    extern __shared__ __align__(16) float smem[];
    float* zb = smem;        // 2 x P response planes
    float* xs = smem + ZBT;  // P staged input planes (16-byte aligned)
    __shared__ float s_w[NK * KK], s_wi[KK];
    __shared__ int s_list[NK], s_slot[2][NK * 4], s_n;
    __shared__ unsigned char s_act[NK];

    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int tid = threadIdx.x, p = tid / M_, i = tid - p * M_;
    const bool col = p < np && i < W, row = p < np && i < H;

    for (int t = tid; t < NK * KK; t += NT) s_w[t] = w[(long long)c * NK * KK + t];
    for (int t = tid; t < NK; t += NT) s_act[t] = active[c * NK + t];
    for (int t = tid; t < XTOT / 4; t += NT) ((float4*)xs)[t] = make_float4(0.f, 0.f, 0.f, 0.f);
    __syncthreads();
    compact_active(NK, s_act, s_list, &s_n);  // study_common.cuh
    for (int t = tid; t < KK; t += NT) {  // the folded identity kernel, in kernel order
        float s = 0.f;
        for (int j = 0; j < NK; ++j)
            if (s_act[j]) s += (float)idc[c * NK + j] * s_w[j * KK + t];
        s_wi[t] = s;
    }
    const long long plane0 = ((long long)b0 * C + c) * (H * W);
    for (int e = tid; e < np * H * W; e += NT) {
        const int pp = e / (H * W), r = e - pp * (H * W), y = r / W, xc = r - y * W;
        xs[pp * XS + (y + 2 * RS) * XP + xc + 2 * RS] = bf16_f32(x[plane0 + (long long)pp * C * (H * W) + r]);
    }
    __syncthreads();
    const int n = s_n;
    for (int t = tid; t < n * 4; t += NT) {  // slot of each active kernel per group, -1: unused group
        const int a = t >> 2, g = t & 3, src = ((c * NK) + s_list[a]) * nrep + g;
        s_slot[0][t] = g < nrep ? (offv[src] + MM - RS) / KS : -1;
        s_slot[1][t] = g < nrep ? (offh[src] + MM - RS) / KS : -1;
    }
    __syncthreads();

    const float* xcol = xs + p * XS + 2 * RS * XP + i + 2 * RS;  // x(0, i)
    const float* xrow = xs + p * XS + (i + 2 * RS) * XP + 2 * RS;  // x(i, 0)
    const long long plane = plane0 + (long long)p * C * (H * W);
    float z[ZL], wk[KK];
    if (col) {
#pragma unroll
        for (int t = 0; t < KK; ++t) wk[t] = s_wi[t];
        line_response<H>(z, xcol, XP, 1, wk);
        float zi[H];
#pragma unroll
        for (int y = 0; y < H; ++y) zi[y] = z[y + RS];
        store_line<H>(out_i + plane + i, W, zi);
    }

    float ov[H], oh[W];
#pragma unroll
    for (int y = 0; y < H; ++y) ov[y] = 0.f;
#pragma unroll
    for (int xc = 0; xc < W; ++xc) oh[xc] = 0.f;

#pragma unroll 1
    for (int a = 0; a < n; ++a) {
        const float* wj = s_w + s_list[a] * KK;
#pragma unroll
        for (int t = 0; t < KK; ++t) wk[t] = wj[t];
        float* zp = zb + (a & 1) * P * ZS + p * ZS;
        if (col) {
            line_response<H>(z, xcol, XP, 1, wk);
#pragma unroll 1
            for (int g = 0; g < 4; ++g) shift_add_slot<H>(s_slot[0][a * 4 + g], ov, z);
#pragma unroll
            for (int y = 0; y < H; ++y) zp[y * ZP + i] = z[y + RS];
        }
        __syncthreads();
        if (row) {
            const float* zr = zp + i * ZP;
#pragma unroll
            for (int xc = 0; xc < W; xc += ZV) {
                if constexpr (ZV == 4) {
                    const float4 v = *(const float4*)(zr + xc);
                    z[xc + RS] = v.x, z[xc + RS + 1] = v.y, z[xc + RS + 2] = v.z, z[xc + RS + 3] = v.w;
                } else if constexpr (ZV == 2) {
                    const float2 v = *(const float2*)(zr + xc);
                    z[xc + RS] = v.x, z[xc + RS + 1] = v.y;
                } else {
                    z[xc + RS] = zr[xc];
                }
            }
#pragma unroll
            for (int e = 0; e < 2 * RS; ++e) {  // the response beyond the row's ends
                const int xc = e < RS ? e - RS : W + e - RS;
                float s = 0.f;
#pragma unroll
                for (int u = -RS; u <= RS; ++u)
#pragma unroll
                    for (int v = -RS; v <= RS; ++v) s = fmaf(wk[(u + RS) * KS + v + RS], xrow[u * XP + xc + v], s);
                z[xc + RS] = s;
            }
#pragma unroll 1
            for (int g = 0; g < 4; ++g) shift_add_slot<W>(s_slot[1][a * 4 + g], oh, z);
        }
    }

    // the H outputs leave through shared memory, so that both branches are stored down columns
    __syncthreads();
    if (row) {
#pragma unroll
        for (int xc = 0; xc < W; ++xc) zb[p * ZS + i * ZP + xc] = oh[xc];
    }
    __syncthreads();
    if (col) {
        store_line<H>(out_v + plane + i, W, ov);
#pragma unroll
        for (int y = 0; y < H; ++y) ov[y] = zb[p * ZS + y * ZP + i];
        store_line<H>(out_h + plane + i, W, ov);
    }
}
