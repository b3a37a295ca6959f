"""Process-group setup and model wrapping (DDP, or FSDP2 `fully_shard` per transformer block for
the large model). Works with torchrun (env://) and with a single plain process.

On GPU the process group is "cpu:gloo,cuda:nccl": NCCL reduces CUDA tensors, gloo the CPU ones
(`all_gather_object` payloads, anything a caller keeps on the CPU), so no collective can fail for
living on the wrong device. The training loop still reduces its statistics on the training device."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device) -> str:
    """The process-group backend for a training device: every collective works on CPU tensors too."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed() -> DistInfo:
    """Join the torchrun process group (also with one process under torchrun, so that a 1-rank run
    exercises the same collectives as an N-rank one); a plain process without torchrun's environment
    runs without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group(backend_for(device))
    return DistInfo(rank, world, local, device)


def wrap_model(model: nn.Module, info: DistInfo, parallel: str, fsdp_units: tuple[type[nn.Module], ...] = ()
               ) -> nn.Module:
    """DDP (buffers not broadcast: the VQ codebook is updated identically on every rank) or FSDP2,
    sharding every module that is an instance of one of `fsdp_units` (the transformer blocks) on its
    own, then the rest of the model as one unit."""
    if info.world_size == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        if not fsdp_units:
            raise ValueError("parallel=fsdp needs the block classes to shard (fsdp_units), e.g. (TransformerLayer,)")
        for module in model.modules():
            if isinstance(module, fsdp_units):
                fully_shard(module)
        return fully_shard(model)
    with warnings.catch_warnings():  # torch 2.13 deprecates the flag but advises keeping it for this use
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place. Keep `t` on the training device: NCCL reduces CUDA tensors only."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average `t` over ranks in place (on its device)."""
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly (a barrier, then destroy it). A process that goes on after
    this is fine; one that ends here should end with `exit_after_shutdown` instead."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_after_shutdown(code: int = 0) -> None:
    """The end of a successful distributed process: leave the process group, flush the standard
    streams and end the process at once, without the interpreter's finalisation.

    Why: a gloo worker thread releases a finished collective (and, through a barrier, the collectives
    still in flight when the barrier was queued, e.g. an `all_gather_object`) a moment *after* the
    caller's wait has returned. When the last reference to a tensor that Python created goes away,
    torch takes the GIL to release its Python object; if the interpreter is finalising by then, the
    thread cannot take the GIL, exits, and the forced unwind ends in std::terminate: the rank aborts
    with "terminate called without an active exception" (SIGABRT) although everything was written.
    Seen about once in 100 two-rank runs on a loaded 2-core machine (core dump: ProcessGroupGloo::
    runLoop -> ~AsyncBarrierWork -> ~AsyncAllgatherWork -> decref_pyobject -> take_gil ->
    PyThread_exit_thread). Ending with os._exit leaves no finalisation for that thread to race.
    Without a process group (a plain process) this only leaves it nothing to do: it returns."""
    if not dist.is_initialized():
        return
    shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be said there
            pass
    os._exit(code)
