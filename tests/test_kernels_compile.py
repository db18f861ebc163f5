"""CI (CPU): every kernels/*.cu compiles to PTX through NVRTC for sm_80 and sm_90, no GPU needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))

try:
    from cupy_backends.cuda.libs import nvrtc
except Exception as exc:  # noqa: BLE001
    nvrtc = None
    _why = f"cupy (NVRTC bindings) not importable: {exc!r}"


def _compile(src: str, name: str, options: list[str]) -> str:
    prog = nvrtc.createProgram(src, name, [], [])
    try:
        nvrtc.compileProgram(prog, options)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"NVRTC failed for {name} {options}:\n{nvrtc.getProgramLog(prog)}") from exc
    ptx = nvrtc.getPTX(prog)
    nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def test_sources_exist():
    assert SOURCES, f"no .cu files under {KERNEL_DIR}"


# per source: the storage dtypes it is built for and the entry points it must export
_DTYPES = {"shift_wise_tc.cu": (1, 2)}
_ENTRIES = {"shift_wise_tc.cu": ("swc_tc_fwd", "swc_tc_bwd", "swc_cross_grad")}


@pytest.mark.skipif(nvrtc is None, reason="cupy not importable" if nvrtc is None else "")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_nvrtc_ptx(path: Path, arch: str):
    src = path.read_text()
    # the variants the CUDA path builds: every storage dtype, k = 1/3/5, small and large tiles
    variants = [
        (dt, ks, ppt, lb, zp)
        for dt in _DTYPES.get(path.name, range(4))
        for ks, ppt, lb, zp in ((3, 8, 512, 64), (5, 16, 1024, 9), (1, 4, 512, 8))
    ]
    entries = _ENTRIES.get(path.name, ("swc_fwd", "swc_bwd"))
    for dt, ks, ppt, lb, zp in variants:
        ptx = _compile(
            src,
            path.name,
            [f"-arch={arch}", f"-DDT={dt}", f"-DKS={ks}", f"-DPPT={ppt}", f"-DLB={lb}", f"-DZP={zp}", "-std=c++17"],
        )
        for entry in entries:
            assert f".entry {entry}" in ptx, f"{path.name}: no entry {entry} for DT={dt} KS={ks}"
        atomics = re.findall(r"^\s*(?:@%p\d+\s+)?(?:atom|red)\.\S+", ptx, flags=re.M)
        assert not atomics, f"kernels must not use atomics (determinism): {atomics[:3]}"
