"""Build and load the CUDA kernels in csrc/ (torch.utils.cpp_extension + ninja).

- JIT: :func:`load_extension` compiles on first use, for the GPU architectures present only, into a
  cache directory (``$SVDQUANT_HF_CACHE`` or ``~/.cache/svdquant_hf``); later loads are a ninja no-op.
- Never builds on a machine without CUDA (returns None). A GPU machine whose compiler fails falls
  back to the reference ops with ONE warning.
- AOT: ``python -m svdquant_hf.ops.build --aot [--arch-list "8.0;8.9;9.0"] [--out DIR]`` builds ahead of
  time (e.g. for a wheel: ``--out svdquant_hf/_csrc/prebuilt``); a prebuilt module found in
  ``$SVDQUANT_HF_KERNELS_DIR`` or ``svdquant_hf/_csrc/prebuilt`` is loaded without compiling.
- ``SVDQUANT_HF_DISABLE_KERNELS=1`` forces the reference path.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

logger = logging.getLogger(__name__)

EXT_NAME = "svdquant_hf_kernels"
SOURCES = ("bindings.cpp", "quantize_act.cu", "w4a4_gemm.cu", "quantize_act_2l.cu", "quantize_act_2l_fused_sm90.cu",
           "quantize_act_2l_cols_sm90.cu", "w4a4_gemm_2l_sm90.cu", "w4a4_gemm_2l_pingpong_sm90.cu", "w4a4_gemv_2l.cu", "rms_norm_rope.cu",
           "lowrank_down_sm90.cu", "quantize_act_2l_pairs_sm90.cu")
HEADERS = ("common.cuh", "launch.h", "pdl.cuh", "rf_loop.cuh", "tma_sm90.cuh", "wgmma_s8.cuh", "widen_2l.cuh",
           "gemv_2l.cuh", "fused_quant_sm90.cuh")

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "module": None}
_on_load: list[Callable[[ModuleType], None]] = []


def on_load(callback: Callable[[ModuleType], None]) -> None:
    """Run ``callback(module)`` once the extension is loaded (at once if it already is)."""
    _on_load.append(callback)
    if _state["module"] is not None:
        callback(_state["module"])  # type: ignore[arg-type]


def csrc_dir() -> Path:
    """Where the .cu/.cpp sources are: the installed package data, else the repository's csrc/."""
    try:
        import svdquant_hf._csrc as pkg  # installed layout

        d = Path(pkg.__file__).parent
        if (d / SOURCES[0]).exists():
            return d
    except ImportError:
        pass
    return Path(__file__).resolve().parents[2] / "csrc"


def local_arch_list() -> list[str]:
    """Compute capabilities of the visible GPUs, e.g. ['9.0'] (empty without CUDA)."""
    if not torch.cuda.is_available():
        return []
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return [f"{major}.{minor}" for major, minor in sorted(caps)]


def _cache_dir(arch_list: list[str]) -> Path:
    root = Path(os.environ.get("SVDQUANT_HF_CACHE", Path.home() / ".cache" / "svdquant_hf"))
    tag = f"torch{torch.__version__.split('+')[0]}-cu{torch.version.cuda}-sm" + "_".join(
        a.replace(".", "") for a in arch_list
    )
    return root / "kernels" / tag


def _cuda_flags() -> list[str]:
    return ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]


def _prebuilt_candidates() -> list[Path]:
    dirs = []
    if os.environ.get("SVDQUANT_HF_KERNELS_DIR"):
        dirs.append(Path(os.environ["SVDQUANT_HF_KERNELS_DIR"]))
    dirs.append(csrc_dir() / "prebuilt")
    return dirs


def _load_prebuilt() -> ModuleType | None:
    for d in _prebuilt_candidates():
        for so in sorted(d.glob(f"{EXT_NAME}*.so")) if d.is_dir() else []:
            spec = importlib.util.spec_from_file_location(EXT_NAME, so)
            if spec is None or spec.loader is None:
                continue
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def with_arch_features(arch_list: list[str]) -> list[str]:
    """Hopper is built as sm_90a: the two-level GEMM uses wgmma, which plain sm_90 code cannot."""
    return [a + "a" if a == "9.0" else a for a in arch_list]


def build(arch_list: list[str], build_dir: Path, verbose: bool = False) -> ModuleType:
    """Compile (or reuse) the extension for ``arch_list`` in ``build_dir`` and import it."""
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    src = csrc_dir()
    arch_list = with_arch_features(arch_list)
    defines = ["-DSVDQ_BUILT_SM90A"] if "9.0a" in arch_list else []
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(arch_list)
    try:
        return cpp_extension.load(
            name=EXT_NAME,
            sources=[str(src / s) for s in SOURCES],
            extra_include_paths=[str(src)],
            extra_cflags=["-O3", *defines],
            extra_cuda_cflags=_cuda_flags() + defines,
            build_directory=str(build_dir),
            verbose=verbose,
            with_cuda=True,
        )
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old


def _build_with_progress(arch_list: list[str], build_dir: Path) -> ModuleType:
    """JIT build; prints a heartbeat while ninja runs (first build takes a minute or two)."""
    stamp = build_dir / f"{EXT_NAME}.so"
    if stamp.exists():
        return build(arch_list, build_dir)
    print(
        f"svdquant_hf: compiling CUDA kernels for sm_{'/'.join(a.replace('.', '') for a in arch_list)} "
        f"into {build_dir} (first use only)...",
        file=sys.stderr,
        flush=True,
    )
    done = threading.Event()

    def heartbeat() -> None:
        t0 = time.monotonic()
        while not done.wait(10.0):
            print(f"svdquant_hf: still compiling ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)

    th = threading.Thread(target=heartbeat, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        mod = build(arch_list, build_dir, verbose=os.environ.get("SVDQUANT_HF_VERBOSE_BUILD") == "1")
    finally:
        done.set()
    print(f"svdquant_hf: CUDA kernels built in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return mod


def load_extension() -> ModuleType | None:
    """The compiled kernels, or None (no CUDA, disabled, or the build failed: warned once)."""
    if _state["tried"]:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if _state["tried"]:
            return _state["module"]  # type: ignore[return-value]
        mod = None
        if os.environ.get("SVDQUANT_HF_DISABLE_KERNELS") == "1" or not torch.cuda.is_available():
            pass
        else:
            try:
                mod = _load_prebuilt()
                if mod is None:
                    arch = local_arch_list()
                    mod = _build_with_progress(arch, _cache_dir(arch))
            except Exception as exc:  # compiler missing or failing: keep working on the reference
                warnings.warn(
                    f"svdquant_hf: could not build the CUDA kernels ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); "
                    "falling back to the (slow) PyTorch reference ops. "
                    "Set SVDQUANT_HF_VERBOSE_BUILD=1 to see the compiler output.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                mod = None
        if mod is not None:
            for callback in _on_load:
                callback(mod)
        _state["module"] = mod
        _state["tried"] = True
        return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the svdquant_hf CUDA kernels.")
    p.add_argument("--aot", action="store_true", help="build ahead of time (for a wheel or an image)")
    p.add_argument("--arch-list", default=None, help='e.g. "8.0;8.6;8.9;9.0" (default: the local GPUs)')
    p.add_argument("--out", default=None, help="output directory (default: the JIT cache directory)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.aot:
        p.print_help()
        return 2
    arch = args.arch_list.split(";") if args.arch_list else local_arch_list()
    if not arch:
        print("svdquant_hf: no GPU visible; pass --arch-list to build without one", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else _cache_dir(arch)
    t0 = time.monotonic()
    mod = build(arch, out, verbose=args.verbose)
    print(f"built {mod.__file__} for {';'.join(arch)} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
