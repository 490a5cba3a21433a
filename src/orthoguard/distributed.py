"""Several processes under ``accelerate launch`` or ``torchrun`` (DDP).

Every rank trains (the Trainer all-reduces the gradients, and the projection sees the synchronised gradient);
rank 0 alone runs the stages that generate or only write, and writes every file. Without a launcher these
helpers are no-ops.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(cpu: bool) -> None:
    """Join the process group the launcher set up (gloo on CPU, nccl on GPU); the Trainer reuses it."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=cpu)
        atexit.register(shutdown)


def shutdown() -> None:
    """Leave the process group while the interpreter is still whole: left to the teardown, gloo's threads can
    abort the exit of a rank that has finished everything (SIGABRT, "terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def is_main() -> bool:
    return not active() or torch.distributed.get_rank() == 0


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object, sent over the process group only)."""
    if not active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
