"""The trainer's `accelerate.Accelerator`, running the strategy the launcher asked for -- never a silent fallback to
plain data parallel.

`accelerate launch --config_file fsdp.yaml` (or a DeepSpeed file) tells the processes which strategy to use through
environment variables (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED). accelerate 1.x honours them only on GPU-like
devices: with `cpu=True` (rlaifv's `--device cpu`) its `AcceleratorState` resolves to MULTI_CPU and ignores both,
and the model is wrapped in DistributedDataParallel -- every process then holds the whole model and optimizer,
which is not what the launch command said. Both strategies run on CPU processes over gloo, so they are set up here:

- FSDP: the state is switched to FSDP exactly as accelerate does for GPUs (distributed type FSDP, the plugin read
  from the launcher's FSDP_* variables). Sharding, clipping, gathering the full state dict and checkpointing are
  then accelerate's own FSDP code, the same path as on GPUs.
- DeepSpeed: accelerate starts DeepSpeed only when not told `cpu=True`; on a machine without a GPU, DeepSpeed picks
  its CPU accelerator, and the process group is gloo. Where a GPU is present the combination is refused: DeepSpeed
  and accelerate would put the model on the GPU that `--device cpu` asked not to use.
"""

from __future__ import annotations

import os
import sys
from contextlib import redirect_stdout
from typing import Any


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def build_accelerator(cpu: bool, **kwargs: Any):
    """`Accelerator(cpu=cpu, **kwargs)` running the strategy the launcher set (see the module docstring)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if cpu and _flag("ACCELERATE_USE_DEEPSPEED"):
        return _deepspeed_on_cpu(**kwargs)
    acc = Accelerator(cpu=cpu, **kwargs)
    state = acc.state
    if state.distributed_type == DistributedType.MULTI_CPU and _flag("ACCELERATE_USE_FSDP"):
        plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables, as accelerate does
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def _deepspeed_on_cpu(**kwargs: Any):
    """DeepSpeed on CPU processes: accelerate's DeepSpeed start-up (cpu=False) with a gloo process group."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # DeepSpeed's start-up on CPUs builds (or loads) its shared-memory collective op and prints so on stdout
    with redirect_stdout(sys.stderr):
        acc = Accelerator(cpu=False, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
    from deepspeed.accelerator import get_accelerator  # importable: accelerate's start-up above required it

    if acc.device.type != "cpu" or get_accelerator().device_name() != "cpu":
        raise ValueError(f"--device cpu with DeepSpeed on a machine with a GPU ({acc.device}, DeepSpeed on "
                         f"{get_accelerator().device_name()}): drop --device cpu to train on the GPUs, or use "
                         "configs/accelerate/fsdp.yaml or ddp.yaml for CPU processes")
    return acc
