"""SW-T bf16 forward + backward of the CUDA op at one stage, a few launches, for Nsight Compute
(bench/gpu_session.sh).

Usage: python bench/op_profile.py [stage 1-4, default 1] [kernel density, default 1.0]
The kernel family follows $SWCONV_CUDA_KERNEL as in training (auto, tc, v2, v1).
"""

import math
import sys

import torch

from swconv.ops.cuda import shift_wise_conv_cuda
from swconv.ops.tables import make_shift_tables

STAGES = {1: (60, 56, 51), 2: (122, 28, 49), 3: (246, 14, 47), 4: (492, 7, 13)}
C, H, K = STAGES[int(sys.argv[1]) if len(sys.argv) > 1 else 1]
density = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
k = 3
nk = math.ceil(K / k)
ph, pv, ident = (t.cuda() for t in make_shift_tables(C, nk, 4))
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(128, C, H, H, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
w = torch.randn(C * nk, 1, k, k, device="cuda", generator=g).requires_grad_(True)
active = torch.rand(C * nk, device="cuda", generator=g) < density if density < 1 else None
for _ in range(3):
    outs = shift_wise_conv_cuda(x, w, ph, pv, ident, K, active)
    torch.autograd.grad(outs, (x, w), [torch.ones_like(o) for o in outs])
torch.cuda.synchronize()
