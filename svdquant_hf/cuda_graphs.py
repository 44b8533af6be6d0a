"""A module's whole forward replayed as one CUDA graph per input signature (opt-in; fixed shapes).

``enable_cuda_graphs(pipe.transformer)`` makes each call copy its tensor inputs into static buffers and replay a graph
captured at the first call with that signature (tensor shapes, dtypes and devices, and the values of every other
argument), so no host work is spent per kernel: in one H200 call a FLUX.1 forward at 1024 px took 103 ms as one graph against
109 timed alone, and 104 against 107 back to back (docs/performance.md). It composes with regional compilation (compile first,
capture after). Per-block ``torch.compile(mode="reduce-overhead")`` does not work on diffusers' FLUX (a block's outputs
are read after the next replay overwrote them); one graph of the whole forward has no such hand-over.

The module must be graph-safe: no host synchronisation (``.item()``, data-dependent shapes), no randomness that
must differ between calls, and its parameters unchanged between captures and replays (loading a LoRA afterwards
needs ``disable_cuda_graphs`` and enabling again). Call it under one grad mode (``torch.no_grad`` as pipelines do, or
``torch.inference_mode``): the static buffers are created in the mode of the first call.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

_ATTR = "_svdquant_cuda_graphs"


class _GraphedForward:
    def __init__(self, module: nn.Module, forward, warmup: int) -> None:
        self.module_name = type(module).__name__
        self.forward = forward
        self.warmup = warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list, Any, Any]] = {}
        functools.update_wrapper(self, forward)  # inspect.signature(module.forward) still sees the real arguments

    def signature(self, leaves: list, spec) -> tuple:
        key = [str(spec)]
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type != "cuda":
                    raise ValueError(f"enable_cuda_graphs({self.module_name}): a {leaf.device.type} tensor input; "
                                     "only CUDA tensors can be captured")
                key.append(("tensor", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride()))
            else:
                try:
                    hash(leaf)
                except TypeError:
                    raise ValueError(f"enable_cuda_graphs({self.module_name}): an argument of type "
                                     f"{type(leaf).__name__} is neither a tensor nor hashable") from None
                key.append(("value", type(leaf).__name__, leaf))
        return tuple(key)

    def __call__(self, *args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = self.signature(leaves, spec)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self.capture(leaves, spec)
        graph, static, _, out = entry
        for buf, leaf in zip(static, leaves):
            if isinstance(buf, torch.Tensor):
                buf.copy_(leaf)
        graph.replay()
        # clones: the next replay overwrites the captured outputs
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    def capture(self, leaves: list, spec):
        static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compilation, autotuning, workspaces: before capture, off the capture stream
            for _ in range(self.warmup):
                self.forward(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self.forward(*args, **kwargs)
        except Exception as e:
            raise RuntimeError(f"enable_cuda_graphs({self.module_name}): the forward could not be captured as a CUDA "
                               f"graph ({type(e).__name__}: {e}); call disable_cuda_graphs on it") from e
        return graph, static, spec, out


def enable_cuda_graphs(module: nn.Module, warmup: int = 2) -> nn.Module:
    """Replay ``module``'s forward as a CUDA graph per input signature (in place; returns the module).

    The first call with a new signature runs ``warmup`` eager calls on a side stream, then captures one; every call
    copies its tensor inputs into the graph's static buffers, replays it, and returns clones of its outputs. Each
    signature's graph keeps its own memory pool (the activations of one forward) until ``disable_cuda_graphs``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"enable_cuda_graphs: expected an nn.Module, got {type(module).__name__}")
    if not torch.cuda.is_available():
        raise ValueError(f"enable_cuda_graphs({type(module).__name__}): CUDA graphs need a CUDA device")
    if warmup < 1:
        raise ValueError(f"enable_cuda_graphs: warmup must be >= 1 (lazy initialisation must not be captured), got {warmup}")
    if getattr(module, _ATTR, None) is not None:
        return module
    graphed = _GraphedForward(module, module.forward, warmup)
    setattr(module, _ATTR, graphed)
    module.forward = graphed  # an instance attribute: nn.Module.__call__ finds it before the class's forward
    return module


def disable_cuda_graphs(module: nn.Module) -> nn.Module:
    """Back to the eager forward; the captured graphs and their memory are released."""
    if getattr(module, _ATTR, None) is not None:
        del module.forward
        delattr(module, _ATTR)
    return module
