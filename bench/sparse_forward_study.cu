// Study, not a product kernel: two sparse forward designs for the density figure of the CUDA op
// (kernels/README.md, "Density: the open figure"). bench/sparse_forward_study.py appends this file
// to kernels/shift_wise_v2.cu (for its dtype helpers, compact_active, zero_fill and copy_planes),
// compiles it with NVRTC and times it against the tensor-core and v2 forwards.
//
// Both compute only the active kernels' responses Z_j (one kernel at a time, double-buffered) and
// gather them into the three branch sums, like v2, but with no bound checks in the vertical gather:
// the images of a block are stacked in one tall plane with PADR zero rows between them, so a
// vertical offset up to PADR reads zeros instead of being tested. Offsets beyond PADR (|dv| >= H + r)
// can only read outside the plane and are skipped per kernel.
//   study_fwd_padded: fp32 responses, a thread owns a column strip of PPT pixels (v2's layout).
//   study_fwd_paired_bf16 (bf16 only): responses stored as bf16 twice, pairs starting at odd (A) and
//     even (B) columns, so each 32-bit shared-memory load of a gather yields two output pixels
//     whatever the horizontal offset's parity; halves the shared-memory bytes per gathered value.
#ifndef NREP
#define NREP 4
#endif
#define SKIP_V (-0x40000000)

extern "C" __global__ void __launch_bounds__(LB, MINB)
study_fwd_padded(const io_t* __restrict__ x, const acc_t* __restrict__ w, const int* __restrict__ offh,
                 const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
                 io_t* __restrict__ out_h, io_t* __restrict__ out_v, io_t* __restrict__ out_i, int B, int C, int H,
                 int W, int nk, int P, int PADR, int SI) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P;
    const int np = min(P, B - b0);
    const int EH = H + 2 * RS, EW = W + 2 * RS;
    const int NHB = (H + PPT - 1) / PPT, NZB = (EH + PPT - 1) / PPT;
    const int XR = NZB * PPT + 2 * RS, XPL = XR * XP;
    const int ZROWS = PADR + P * SI + PPT, ZB = ZROWS * ZP;
    const int tid = threadIdx.x;

    acc_t* s_w = (acc_t*)smem_raw;
    acc_t* s_x = s_w + nk * KK;
    acc_t* s_z = s_x + P * XPL;
    int* s_dh = (int*)(s_z + 2 * ZB);
    int* s_dv = s_dh + nk * NREP;
    int* s_id = s_dv + nk * NREP;
    int* s_list = s_id + nk;

    compact_active(c, nk, active, s_list, &s_n);
    zero_fill(s_x, P * XPL + 2 * ZB);
    __syncthreads();
    const int n = s_n;
    stage_tables(c, nk, NREP, n, w, offh, offv, idc, s_w, s_dh, s_dv, s_id, s_list);
    // each thread rewrites the vertical offsets it staged (same loop as stage_tables): no barrier needed
    for (int t = tid; t < n * NREP; t += blockDim.x) {
        const int dv = s_dv[t];
        s_dv[t] = (dv > PADR || dv < -PADR) ? SKIP_V : dv * ZP;
    }
    copy_planes(x, s_x, b0, np, C, c, H, W, XR, XP, 2 * RS);

    // response strip of this thread (one per thread: the plan sets blockDim >= P*EW*NZB)
    int zp_img = 0, eh0 = 0, ew = 0;
    const bool zown = column_strip(tid, P, EW, NZB, zp_img, eh0, ew);
    const int xoff = zp_img * XPL + eh0 * XP + ew, zoff = (PADR + zp_img * SI + eh0) * ZP + ew;
    // output strip of this thread
    int op = 0, ow = 0, oh0 = 0;
    const bool own = column_strip(tid, np, W, NHB, op, oh0, ow);
    const int obase = (PADR + op * SI + oh0 + RS) * ZP + ow + RS;
    const int hcol = ow + RS;
    acc_t aH[PPT], aV[PPT], aI[PPT];
#pragma unroll
    for (int i = 0; i < PPT; ++i) { aH[i] = 0; aV[i] = 0; aI[i] = 0; }
    __syncthreads();

    auto zcompute = [&](int i, acc_t* buf) {
        if (!zown) return;
        acc_t xv[WR][KS];
        load_window(s_x + xoff, xv);
        strip_response(s_w + i * KK, xv, buf + zoff);
    };

    if (n > 0) zcompute(0, s_z);
    __syncthreads();
    for (int i = 0; i < n; ++i) {
        if (i + 1 < n) zcompute(i + 1, s_z + ((i + 1) & 1) * ZB);
        if (own) {
            const acc_t* zb = s_z + (i & 1) * ZB + obase;
#pragma unroll
            for (int g = 0; g < NREP; ++g) {
                const int dh = s_dh[i * NREP + g], dvo = s_dv[i * NREP + g];
                if ((unsigned)(hcol + dh) < (unsigned)EW) {
#pragma unroll
                    for (int t = 0; t < PPT; ++t) aH[t] += zb[t * ZP + dh];
                }
                if (dvo != SKIP_V) {
#pragma unroll
                    for (int t = 0; t < PPT; ++t) aV[t] += zb[t * ZP + dvo];
                }
            }
            const int ic = s_id[i];
            if (ic) {
                const acc_t f = (acc_t)ic;
#pragma unroll
                for (int t = 0; t < PPT; ++t) aI[t] += f * zb[t * ZP];
            }
        }
        __syncthreads();
    }

    if (own) store_branches(out_h, out_v, out_i, ((long long)(b0 + op) * C + c) * H * W + ow, oh0, H, W, aH, aV, aI);
}

// Paired bf16: A[c] = Z(ext column c - 1), B[c] = Z(c); a gather at ext column e reads the pair
// (Z(e), Z(e + 1)) from A when e is odd and from B when e is even, both at an even index.
// PZPW / PXPW: the pitches (32-bit words) of the response and input planes, compile-time so that
// the per-row offsets of the unrolled loads are immediates.
#if DT == 2 && NREP == 4 && KS == 3 && defined(PZPW) && defined(PXPW)
__device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ unsigned bf_pack(float lo, float hi) {
    unsigned d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

extern "C" __global__ void __launch_bounds__(LB, MINB)
study_fwd_paired_bf16(const unsigned short* __restrict__ x, const float* __restrict__ w,
                      const int* __restrict__ offh, const int* __restrict__ offv, const int* __restrict__ idc,
                      const unsigned char* __restrict__ active, unsigned short* __restrict__ out_h,
                      unsigned short* __restrict__ out_v, unsigned short* __restrict__ out_i, int B, int C, int H,
                      int W, int nk, int P, int PADR, int SI) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P;
    const int np = min(P, B - b0);
    const int EH = H + 2, EW = W + 2;
    const int NHB = (H + PPT - 1) / PPT, NZB = (EH + PPT - 1) / PPT, NQZ = EW / 2 + 1, NQO = (W + 1) / 2;
    constexpr int ZPW = PZPW, XPW = PXPW;
    const int XR = NZB * PPT + 2, XPL = ((XR * XPW + 3) / 4) * 4;
    const int ZROWS = PADR + P * SI + PPT, ZL = ((ZROWS * ZPW + 3) / 4) * 4;
    const int tid = threadIdx.x, NT = blockDim.x;

    float* s_w = (float*)smem_raw;                     // nk * 12
    unsigned* s_x = (unsigned*)(s_w + nk * 12);        // P * XPL words (bf16 pairs)
    unsigned* s_z = s_x + P * XPL;                     // 2 buffers x (A, B) x ZL words
    int4* s_th = (int4*)(s_z + 4 * ZL);                // per active kernel: H word offsets
    int4* s_td = s_th + nk;                            //                    dh
    int4* s_tv = s_td + nk;                            //                    V word offsets
    int* s_id = (int*)(s_tv + nk);
    int* s_list = s_id + nk;

    compact_active(c, nk, active, s_list, &s_n);
    for (int t = tid; t < (P * XPL + 4 * ZL) / 4; t += NT) ((uint4*)s_x)[t] = make_uint4(0u, 0u, 0u, 0u);
    __syncthreads();
    const int n = s_n;
    for (int t = tid; t < n * KK; t += NT) {
        const int i = t / KK, e = t - i * KK;
        s_w[i * 12 + e] = w[(long long)(c * nk + s_list[i]) * KK + e];
    }
    for (int t = tid; t < n * NREP; t += NT) {
        const int i = t / NREP, g = t - i * NREP;
        const long long src = (long long)(c * nk + s_list[i]) * NREP + g;
        const int dh = offh[src], dv = offv[src];
        ((int*)s_th)[t] = ((dh & 1) ? ZL : 0) + 1 + (dh >> 1);
        ((int*)s_td)[t] = dh;
        ((int*)s_tv)[t] = (dv > PADR || dv < -PADR) ? SKIP_V : dv * ZPW + 1;
    }
    for (int t = tid; t < n; t += NT) s_id[t] = idc[c * nk + s_list[t]];
    {
        const long long pstride = (long long)C * H * W;
        const unsigned short* xb = x + ((long long)b0 * C + c) * H * W;
        if ((W & 1) == 0) {
            const int W2 = W / 2, n2 = np * H * W2;
            for (int t = tid; t < n2; t += NT) {
                const int p = t / (H * W2), rem = t - p * H * W2, y = rem / W2, k = rem - y * W2;
                s_x[p * XPL + (y + 2) * XPW + k + 2] = ((const unsigned*)(xb + p * pstride))[y * W2 + k];
            }
        } else {
            unsigned short* sx16 = (unsigned short*)s_x;
            for (int t = tid; t < np * H * W; t += NT) {
                const int p = t / (H * W), rem = t - p * H * W, y = rem / W, k = rem - y * W;
                sx16[2 * (p * XPL + (y + 2) * XPW) + k + 4] = xb[p * pstride + y * W + k];
            }
        }
    }

    int zp_img = 0, eh0 = 0, qz = 0;
    const bool zown = column_strip(tid, P, NQZ, NZB, zp_img, eh0, qz);
    const int xoff = zp_img * XPL + eh0 * XPW + qz, zoff = (PADR + zp_img * SI + eh0) * ZPW + qz;
    int op = 0, qo = 0, oh0 = 0;
    const bool own = column_strip(tid, np, NQO, NHB, op, oh0, qo);
    const int obase = (PADR + op * SI + oh0 + 1) * ZPW + qo;
    const int w0 = 2 * qo;
    float aH[PPT][2], aV[PPT][2], aI[PPT][2];
#pragma unroll
    for (int t = 0; t < PPT; ++t)
#pragma unroll
        for (int u = 0; u < 2; ++u) { aH[t][u] = 0.f; aV[t][u] = 0.f; aI[t][u] = 0.f; }
    __syncthreads();

    float xv[PPT + 2][5];
    auto load_x = [&]() {
        const unsigned* xp = s_x + xoff;
#pragma unroll
        for (int a = 0; a < PPT + 2; ++a) {
            const unsigned u0 = xp[a * XPW], u1 = xp[a * XPW + 1], u2 = xp[a * XPW + 2];
            xv[a][0] = bf_hi(u0); xv[a][1] = bf_lo(u1); xv[a][2] = bf_hi(u1); xv[a][3] = bf_lo(u2); xv[a][4] = bf_hi(u2);
        }
    };
    auto zcompute = [&](int i, unsigned* buf) {
        if (!zown) return;
        load_x();
        const float4* wp = (const float4*)(s_w + i * 12);
        const float4 w0v = wp[0], w1v = wp[1], w2v = wp[2];
        const float wr[9] = {w0v.x, w0v.y, w0v.z, w0v.w, w1v.x, w1v.y, w1v.z, w1v.w, w2v.x};
        unsigned* za = buf + zoff;
#pragma unroll
        for (int t = 0; t < PPT; ++t) {
            float z[3];
#pragma unroll
            for (int u = 0; u < 3; ++u) {
                float s = 0.f;
#pragma unroll
                for (int a = 0; a < 3; ++a)
#pragma unroll
                    for (int bb = 0; bb < 3; ++bb) s += wr[a * 3 + bb] * xv[t + a][u + bb];
                z[u] = s;
            }
            za[t * ZPW] = bf_pack(z[0], z[1]);
            za[t * ZPW + ZL] = bf_pack(z[1], z[2]);
        }
    };

    if (n > 0) zcompute(0, s_z);
    __syncthreads();
    for (int i = 0; i < n; ++i) {
        if (i + 1 < n) zcompute(i + 1, s_z + ((i + 1) & 1) * 2 * ZL);
        if (own) {
            const unsigned* zb = s_z + (i & 1) * 2 * ZL + obase;
            const int4 th = s_th[i], td = s_td[i], tv = s_tv[i];
            const int hh[4] = {th.x, th.y, th.z, th.w}, dd[4] = {td.x, td.y, td.z, td.w}, vv[4] = {tv.x, tv.y, tv.z, tv.w};
#pragma unroll
            for (int g = 0; g < 4; ++g) {
                if ((unsigned)(w0 + 2 + dd[g]) <= (unsigned)EW) {
#pragma unroll
                    for (int t = 0; t < PPT; ++t) {
                        const unsigned u = zb[hh[g] + t * ZPW];
                        aH[t][0] += bf_lo(u);
                        aH[t][1] += bf_hi(u);
                    }
                }
                if (vv[g] != SKIP_V) {
#pragma unroll
                    for (int t = 0; t < PPT; ++t) {
                        const unsigned u = zb[vv[g] + t * ZPW];
                        aV[t][0] += bf_lo(u);
                        aV[t][1] += bf_hi(u);
                    }
                }
            }
            const int ic = s_id[i];
            if (ic) {
                const float f = (float)ic;
#pragma unroll
                for (int t = 0; t < PPT; ++t) {
                    const unsigned u = zb[1 + t * ZPW];
                    aI[t][0] += f * bf_lo(u);
                    aI[t][1] += f * bf_hi(u);
                }
            }
        }
        __syncthreads();
    }

    if (own) {
        const long long o0 = ((long long)(b0 + op) * C + c) * H * W + w0;
#pragma unroll
        for (int t = 0; t < PPT; ++t) {
            const int h = oh0 + t;
            if (h >= H) continue;
            const long long o = o0 + (long long)h * W;
            if ((W & 1) == 0) {
                *(unsigned*)(out_h + o) = bf_pack(aH[t][0], aH[t][1]);
                *(unsigned*)(out_v + o) = bf_pack(aV[t][0], aV[t][1]);
                *(unsigned*)(out_i + o) = bf_pack(aI[t][0], aI[t][1]);
            } else {
                st_io(out_h, o, aH[t][0]); st_io(out_v, o, aV[t][0]); st_io(out_i, o, aI[t][0]);
                if (w0 + 1 < W) { st_io(out_h, o + 1, aH[t][1]); st_io(out_v, o + 1, aV[t][1]); st_io(out_i, o + 1, aI[t][1]); }
            }
        }
    }
}
#endif
