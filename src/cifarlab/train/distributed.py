"""Data-parallel training with torch.distributed: gloo on CPUs, NCCL on GPUs, one machine or many.

`cifarlab train --nproc N` starts N local processes itself; `torchrun` (one or many nodes) starts
them instead and cifarlab reads RANK/WORLD_SIZE/MASTER_ADDR from the environment. Every rank
holds the whole dataset and trains on its own shard of each epoch's shuffled order; gradients
are averaged by DDP; only rank 0 writes the run directory.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cifarlab.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if any rank says so (keeps time-limit decisions in step)."""
        if not self.active:
            return flag
        t = torch.tensor(float(flag), device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        """Wait for every rank: no rank may exit while another still works (gloo aborts on a closed peer)."""
        if self.active:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's value of a picklable object, on every rank (e.g. the run directory's name)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """BatchNorm statistics differ per rank after training steps; rank 0's are the model's."""
        if self.active:
            for b in model.buffers():
                dist.broadcast(b, 0)


def from_env(device_type: str) -> Dist:
    """The process group torchrun (or `--nproc`) set up for us, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method="env://")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(parent_pid: int) -> None:
    """Stop this process when `parent_pid` dies (kill -9 of `cifarlab train --nproc N` must not leave its ranks
    training): the kernel's PR_SET_PDEATHSIG on Linux, and a thread polling the parent's pid everywhere
    (also covering a parent that died before the signal was armed)."""
    import signal
    import threading
    import time

    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(137)
            time.sleep(0.5)

    if os.getppid() != parent_pid:
        os._exit(137)
    threading.Thread(target=watch, name="cifarlab-parent-watch", daemon=True).start()


def _worker(local_rank: int, nproc: int, port: int, errors, fn, args, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        fn(*args)
    except UserError as err:
        errors.put(str(err))
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, fn, *args) -> None:
    """Run fn(*args) in `nproc` local processes; a UserError in any of them is raised here."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    try:
        mp.spawn(_worker, args=(nproc, free_port(), errors, fn, args, os.getpid()), nprocs=nproc, join=True)
    except mp.ProcessExitedException as err:
        if not errors.empty():
            raise UserError(errors.get()) from None
        raise UserError(f"a training process exited with code {err.exit_code}: see the log above") from None
    except mp.ProcessRaisedException:
        if not errors.empty():
            raise UserError(errors.get()) from None
        raise
