"""Activation statistics through forward hooks: per-channel absmax and a row sample per layer."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .algorithm.svdquant import QuantizationError

CalibrationData = Iterable[Any] | Callable[[nn.Module], Any]


@dataclass
class LayerStats:
    absmax: torch.Tensor | None = None  # fp32 [K]
    rows: list[torch.Tensor] = field(default_factory=list)  # sampled input rows, on CPU
    n_rows: int = 0
    seen_tokens: int = 0

    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows, 0) if self.rows else torch.empty(0)


class StatsCollector:
    """Hooks on target linears that record input statistics while calibration runs."""

    def __init__(self, targets: Mapping[str, nn.Module], max_rows: int, seed: int = 0) -> None:
        self.targets = dict(targets)
        self.max_rows = max_rows
        self.stats = {name: LayerStats() for name in self.targets}
        self._gen = torch.Generator().manual_seed(seed)
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable:
        def hook(_mod: nn.Module, args: tuple, _kwargs: dict | None = None) -> None:
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1])
            if not torch.isfinite(x2).all():
                raise QuantizationError(f"layer {name!r}: calibration input contains NaN or Inf")
            st = self.stats[name]
            amax = x2.float().abs().amax(dim=0)
            st.absmax = amax if st.absmax is None else torch.maximum(st.absmax, amax.to(st.absmax.device))
            st.seen_tokens += x2.shape[0]
            self._keep_rows(st, x2)

        return hook

    def _append_sample(self, st: LayerStats, x2: torch.Tensor, take: int) -> None:
        idx = torch.randperm(x2.shape[0], generator=self._gen)[:take].to(x2.device)
        st.rows.append(x2.index_select(0, idx).to("cpu"))
        st.n_rows += take

    def _keep_rows(self, st: LayerStats, x2: torch.Tensor) -> None:
        """Row sample of one forward call; resampled to max_rows when it grows past twice that."""
        self._append_sample(st, x2, min(x2.shape[0], self.max_rows))
        if st.n_rows > 2 * self.max_rows:
            allr = torch.cat(st.rows, 0)
            keep = torch.randperm(allr.shape[0], generator=self._gen)[: self.max_rows]
            st.rows = [allr[keep]]
            st.n_rows = self.max_rows

    def __enter__(self) -> "StatsCollector":
        for name, mod in self.targets.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def finalize(self) -> dict[str, LayerStats]:
        for name, st in self.stats.items():
            if st.n_rows > self.max_rows:
                allr = st.sample()
                keep = torch.randperm(allr.shape[0], generator=self._gen)[: self.max_rows]
                st.rows, st.n_rows = [allr[keep]], self.max_rows
        return self.stats


def run_calibration(model: nn.Module, data: CalibrationData) -> int:
    """Run forward passes over ``data``; returns the number of batches (callables count as one)."""
    with torch.no_grad():
        if callable(data) and not isinstance(data, (nn.Module, torch.Tensor)):
            data(model)
            return 1
        n = 0
        for item in data:
            if isinstance(item, Mapping):
                model(**item)
            elif isinstance(item, (tuple, list)):
                model(*item)
            else:
                model(item)
            n += 1
        return n


def collect_statistics(
    model: nn.Module, targets: Mapping[str, nn.Module], data: CalibrationData, max_rows: int
) -> dict[str, LayerStats]:
    collector = StatsCollector(targets, max_rows)
    with collector:
        n = run_calibration(model, data)
    stats = collector.finalize()
    if n == 0 or all(st.seen_tokens == 0 for st in stats.values()):
        names = list(stats)
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise QuantizationError(
            f"calibration data is empty: {n} batch(es) ran and no forward pass reached the layers to "
            f"quantize ({shown})"
        )
    return stats
