"""Stage-1 SW-T bf16 forward + backward of the CUDA op, a few launches, for Nsight Compute."""

import math

import torch

from swconv.ops.cuda import shift_wise_conv_cuda
from swconv.ops.tables import make_shift_tables

C, H, K, k = 60, 56, 51, 3
nk = math.ceil(K / k)
ph, pv, ident = (t.cuda() for t in make_shift_tables(C, nk, 4))
x = torch.randn(128, C, H, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
w = torch.randn(C * nk, 1, k, k, device="cuda", requires_grad=True)
for _ in range(3):
    outs = shift_wise_conv_cuda(x, w, ph, pv, ident, K)
    torch.autograd.grad(outs, (x, w), [torch.ones_like(o) for o in outs])
torch.cuda.synchronize()
