"""Where pawlab runs: the device, bf16, and the process group under ``torchrun``.

One place for each of these facts; the rest of pawlab asks here. Outside ``torchrun`` (or
before the process group is set up) there is one process: rank 0 of a world of 1.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar, cast

import torch
import torch.distributed as dist

from pawlab.errors import ConfigError

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


def launched_rank() -> int:
    """The rank ``torchrun`` gave this process (``RANK``), known before the group is set up."""
    return int(os.environ.get("RANK", "0"))


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it builds a cache); the others wait for it, then run the
    block too (they read the cache). One process just runs it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def decided_by_main(decide: Callable[[], T]) -> T:
    """``decide()`` on rank 0, its result sent to every process (one process: just ``decide()``):
    for a choice the ranks must share, such as what computes the features they all train on."""
    if not is_distributed():
        return decide()
    box = [decide() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])


def init_distributed(device: str = "auto") -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group, gloo on the CPU and
    nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one: left to the interpreter's exit,
    gloo's threads can be torn down while still running ("terminate called without an active
    exception", SIGABRT)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present; under torchrun this process's ``LOCAL_RANK`` GPU), ``cpu``,
    ``cuda`` or ``cuda:N``."""
    if name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"device: must be auto, cpu or cuda[:N], got {name!r}")
    if name == "auto":
        if is_distributed() and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or ``auto`` where the hardware runs it fast."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU operations on one thread, then restore the setting: for one small
    example at a time (a Hypothesis strategy's), where a thread pool only costs, oversubscribes
    a busy machine, and a fixed count keeps results reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# CPU features that decide which inference route is fastest: bf16 and int8 instructions
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


@functools.cache
def cpu_name_and_flags() -> tuple[str, tuple[str, ...]]:
    """This CPU's model name and which of the instructions that matter to inference it has
    (from /proc/cpuinfo; the platform's processor name elsewhere)."""
    import platform
    from pathlib import Path

    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return name, tuple(f for f in _CPU_FLAGS if f in flags)


def has_vnni() -> bool:
    """Whether this CPU multiplies uint8 by int8 in 32-bit sums (VNNI): without it onnxruntime's
    int8 kernels sum in 16 bits, which 8-bit weights can saturate (`pawlab.inference.quantize`'s
    ``reduce_range``)."""
    return any(f in cpu_name_and_flags()[1] for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def cpu_class() -> str:
    """The CPU in words, for every speed figure: ``Intel(R) Xeon(R) Processor, 2 threads,
    fast bf16 (avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8)``."""
    name, flags = cpu_name_and_flags()
    fast = "fast bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no fast bf16"
    return f"{name}, {torch.get_num_threads()} threads, {fast} ({' '.join(flags) or 'no AVX2'})"
