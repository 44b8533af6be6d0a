"""The plain-Python SVDQuant options. The host-library configs in quantizers/ extend this class."""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .formats.int4 import SUPPORTED_GROUP_SIZES
from .formats.int4_2l import MAX_K_2L

QUANT_FORMATS = ("int4", "int4_2l", "nvfp4")
AUTO_FORMAT = "auto"  # resolved when the options are made: see auto_quant_format
INT4_FORMATS = ("int4", "int4_2l")  # formats whose group size is an option (32, 64 or 128)
# tensors that only layers of one format have (besides qweight, wscales, smooth_factor, proj_*, bias)
FORMAT_TENSORS = {"wtscale": "nvfp4", "wchannel": "int4_2l"}


def hopper_present() -> bool:
    """Whether a CUDA device of this machine is a Hopper GPU (compute capability 9.0)."""
    import torch

    return torch.cuda.is_available() and any(
        torch.cuda.get_device_capability(i) == (9, 0) for i in range(torch.cuda.device_count())
    )


def auto_quant_format() -> str:
    """The format measured fastest on the GPUs visible now, at equal quality (docs/performance.md, docs/quality.md).

    Hopper (compute capability 9.0): "int4_2l", whose exact int8 wgmma GEMM beats cuBLAS bf16 there while
    the per-group-scale "int4" kernel runs at a quarter of it. Anything else (other GPUs, no GPU):
    "int4", the paper's format, which Nunchaku checkpoints use too.
    """
    return "int4_2l" if hopper_present() else "int4"


@dataclass
class SVDQuantOptions:
    """What to quantize and how.

    rank: rank of the 16-bit low-rank branch (0 disables it).
    group_size: INT4 group along K (32, 64 or 128, for "int4" and "int4_2l"); NVFP4 always uses 16.
    quant_format: "auto" (default: resolved at once by auto_quant_format, "int4_2l" on Hopper, else
        "int4"; the resolved name is what configs and checkpoints record),
        "int4" (per-group 16-bit scales, the paper's format),
        "int4_2l" (INT4 with two-level scales: an fp32 scale per row and a 4-bit integer multiplier
        per group, so the GEMM is one exact integer sum; made for Hopper's int8 wgmma; see
        docs/format.md), or "nvfp4" (reference path, for quality comparison).
    weight_only: quantize weights only (W4A16); activations stay 16-bit and no smoothing is applied.
    alpha: fixed smoothing exponent in [0, 1]. None: grid search when calibration data is given,
        otherwise the data-free rule (no smoothing; the low-rank branch absorbs weight outliers).
    alpha_grid: number of grid points for the calibrated search of alpha.
    refine_iters: extra rounds fitting the low-rank branch to the quantized residual's error.
    gptq: quantize the residual with GPTQ (needs calibration data).
    calib_tokens: input rows cached per layer for the alpha search / GPTQ.
    modules_to_not_convert: module-name patterns left in 16 bits (exact name, dotted component
        sequence, or fnmatch glob).
    joint_qkv: quantize each attention's q/k/v (and add_q/k/v) jointly at 3x the rank (one smoothing and
        branch, split back into the usual layers), so that ``fuse_shared_input_projections`` can run
        them as one layer (docs/algorithm.md).
    """

    rank: int = 32
    group_size: int = 64
    quant_format: str = AUTO_FORMAT
    weight_only: bool = False
    alpha: float | None = None
    alpha_grid: int = 20
    refine_iters: int = 0
    gptq: bool = False
    calib_tokens: int = 1024
    modules_to_not_convert: list[str] | None = field(default=None)
    joint_qkv: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.quant_format == AUTO_FORMAT:
            self.quant_format = auto_quant_format()
        if self.quant_format not in QUANT_FORMATS:
            raise ValueError(f"SVDQuant option quant_format={self.quant_format!r}: expected one of {QUANT_FORMATS} or {AUTO_FORMAT!r}")
        if self.quant_format in INT4_FORMATS and self.group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(
                f"SVDQuant option group_size={self.group_size}: quant_format={self.quant_format!r} supports "
                f"{SUPPORTED_GROUP_SIZES}"
            )
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"SVDQuant option rank={self.rank!r}: expected an integer >= 0")
        if self.alpha is not None and not (0.0 <= float(self.alpha) <= 1.0):
            raise ValueError(f"SVDQuant option alpha={self.alpha!r}: expected a number in [0, 1] or None")
        if self.alpha_grid < 2:
            raise ValueError(f"SVDQuant option alpha_grid={self.alpha_grid}: expected >= 2")
        if self.refine_iters < 0:
            raise ValueError(f"SVDQuant option refine_iters={self.refine_iters}: expected >= 0")
        if self.calib_tokens < 1:
            raise ValueError(f"SVDQuant option calib_tokens={self.calib_tokens}: expected >= 1")
        if not isinstance(self.joint_qkv, bool):
            raise ValueError(f"SVDQuant option joint_qkv={self.joint_qkv!r}: expected True or False")
        if self.modules_to_not_convert is not None and not all(
            isinstance(p, str) for p in self.modules_to_not_convert
        ):
            raise ValueError("SVDQuant option modules_to_not_convert: expected a list of strings")

    @property
    def effective_group_size(self) -> int:
        return 16 if self.quant_format == "nvfp4" else self.group_size

    def in_features_problem(self, in_features: int) -> str | None:
        """Why a layer with this many inputs cannot use the format (besides the group size), or None."""
        if self.quant_format == "int4_2l" and in_features > MAX_K_2L:
            return (
                f"in_features={in_features} exceeds {MAX_K_2L}, the largest reduction whose exact int32 "
                "accumulation quant_format='int4_2l' guarantees"
            )
        return None

    def is_skipped(self, module_name: str, extra_patterns: list[str] | tuple[str, ...] = ()) -> bool:
        patterns = list(self.modules_to_not_convert or []) + list(extra_patterns)
        return any(name_matches(module_name, p) for p in patterns)

    def options_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(SVDQuantOptions)}

    @classmethod
    def from_options_dict(cls, d: dict[str, Any]) -> "SVDQuantOptions":
        known = {f.name for f in fields(SVDQuantOptions)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown SVDQuant option(s): {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def name_matches(name: str, pattern: str) -> bool:
    """True if ``pattern`` names ``name``: exact, a dotted component run inside it, or a glob."""
    if name == pattern or fnmatch.fnmatchcase(name, pattern):
        return True
    return f".{pattern}." in f".{name}."


__all__ = ["SVDQuantOptions", "QUANT_FORMATS", "INT4_FORMATS", "FORMAT_TENSORS", "name_matches", "asdict"]
