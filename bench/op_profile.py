"""SW-T bf16 forward + backward of the CUDA op at one stage (argument 1-4, default 1), a few
launches, for Nsight Compute (bench/gpu_session.sh)."""

import math
import sys

import torch

from swconv.ops.cuda import shift_wise_conv_cuda
from swconv.ops.tables import make_shift_tables

STAGES = {1: (60, 56, 51), 2: (122, 28, 49), 3: (246, 14, 47), 4: (492, 7, 13)}
C, H, K = STAGES[int(sys.argv[1]) if len(sys.argv) > 1 else 1]
k = 3
nk = math.ceil(K / k)
ph, pv, ident = (t.cuda() for t in make_shift_tables(C, nk, 4))
x = torch.randn(128, C, H, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(C * nk, 1, k, k, device="cuda", requires_grad=True)
for _ in range(3):
    outs = shift_wise_conv_cuda(x, w, ph, pv, ident, K)
    torch.autograd.grad(outs, (x, w), [torch.ones_like(o) for o in outs])
torch.cuda.synchronize()
