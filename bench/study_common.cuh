// Device helpers the sparse forward studies share; bench/forward_study.py's study_source puts this
// file before each study's source.

// Warp 0 compacts the active kernels (mask act, ballot + popc: ascending order).
__device__ __forceinline__ void compact_active(int nk, const unsigned char* act, int* list, int* s_n) {
    const int tid = threadIdx.x;
    if (tid < 32) {
        int n = 0;
        for (int base = 0; base < nk; base += 32) {
            const int j = base + tid;
            const bool a = j < nk && act[j];
            const unsigned msk = __ballot_sync(0xffffffffu, a);
            if (a) list[n + __popc(msk & ((1u << tid) - 1u))] = j;
            n += __popc(msk);
        }
        if (tid == 0) *s_n = n;
    }
}
