"""CI (CPU): every kernels/*.cu compiles to PTX through NVRTC for sm_80 and sm_90, and the
tensor-core kernels compile to sm_90 machine code without register spills; no GPU needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))

try:
    from cupy_backends.cuda.libs import nvrtc

    _why = ""
except Exception as exc:  # noqa: BLE001
    nvrtc = None
    _why = f"cupy (NVRTC bindings) not importable: {exc!r}"

needs_nvrtc = pytest.mark.skipif(nvrtc is None, reason=_why)


def _compile(src: str, name: str, options: list[str], log: bool = False) -> str:
    """The PTX of ``src`` (with ``log``: NVRTC's log instead, where ptxas reports)."""
    prog = nvrtc.createProgram(src, name, [], [])
    try:
        nvrtc.compileProgram(prog, options)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"NVRTC failed for {name} {options}:\n{nvrtc.getProgramLog(prog)}") from exc
    out = nvrtc.getProgramLog(prog) if log else nvrtc.getPTX(prog)
    nvrtc.destroyProgram(prog)
    return out.decode() if isinstance(out, bytes) else out


def test_sources_exist():
    assert SOURCES, f"no .cu files under {KERNEL_DIR}"


# per source: the storage dtypes it is built for and the entry points it must export
_DTYPES = {"shift_wise_tc.cu": (1, 2)}
_ENTRIES = {"shift_wise_tc.cu": ("swc_tc_fwd", "swc_tc_bwd", "swc_cross_grad")}


@needs_nvrtc
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


_PTXAS_ENTRY = re.compile(
    r"Function properties for (\w+)\s+ptxas\s+\.\s+(\d+) bytes stack frame, (\d+) bytes spill stores, "
    r"(\d+) bytes spill loads"
)


def _uncached_ptxas_log(path: Path, options: list[str]) -> str:
    """NVRTC's log for ``path`` built to machine code in a fresh process with the CUDA compute cache
    off. NVRTC 13 takes the machine code of PTX it has built before from the compute cache and then
    logs nothing from ptxas; it reads CUDA_CACHE_DISABLE only when it loads, hence the process."""
    code = (
        "import sys, test_kernels_compile as t;"
        "print(t._compile(open(sys.argv[1]).read(), sys.argv[2], sys.argv[3:], True))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), path.name, *options],
        cwd=Path(__file__).resolve().parent,
        env={**os.environ, "CUDA_CACHE_DISABLE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"NVRTC subprocess failed:\n{done.stderr}"
    return done.stdout


@needs_nvrtc
@pytest.mark.parametrize("dt", [1, 2], ids=["fp16", "bf16"])
def test_tensor_core_kernels_do_not_spill(dt: int):
    """sm_90 machine code of the tensor-core kernels at k = 3 (NVRTC runs ptxas on the CPU): no
    stack frame and no spills. The kernels are compiled against register caps (64 forward, 128
    backward) that they fill; a spill there costs the bf16 path more than any GPU test shows."""
    path = KERNEL_DIR / "shift_wise_tc.cu"
    log = _uncached_ptxas_log(path, ["-arch=sm_90", f"-DDT={dt}", "-DKS=3", "-std=c++17", "--ptxas-options=-v"])
    found = {m[0]: tuple(map(int, m[1:])) for m in _PTXAS_ENTRY.findall(log)}
    assert set(found) == set(_ENTRIES[path.name]), f"ptxas reported {sorted(found)}:\n{log}"
    spilling = {name: v for name, v in found.items() if any(v)}
    assert not spilling, f"(stack frame, spill stores, spill loads) bytes: {spilling}"
