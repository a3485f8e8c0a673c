"""Which device to run on (the one asked for, checked, or the GPU when there is one) and the
mixed precision that pays off there."""

from __future__ import annotations

from typing import Any

import torch

from nhlcli.errors import NhlError
from nhlcli.text import counted

DEVICE_HELP = "use cpu, or give no device to take the GPU when there is one"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, or the GPU when there is one and the CPU otherwise.

    A device torch does not know, or one this machine does not have, fails here in one line
    rather than deep inside torch at the first tensor moved.
    """
    if isinstance(device, str):
        device = device.strip()
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise NhlError(
            f"{device!r} is not a device torch knows; {DEVICE_HELP} (cuda:N picks GPU N)", "device"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NhlError(f"{device}: no CUDA GPU is visible on this machine; {DEVICE_HELP}", "device")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise NhlError(
                f"{device}: this machine has {counted(count, 'CUDA GPU')}, numbered 0 to {count - 1}",
                "device",
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise NhlError(f"{device}: Apple's MPS is not available on this machine; {DEVICE_HELP}", "device")
        return dev
    raise NhlError(f"{device}: nhl runs on cpu, cuda or mps, not {dev.type}; {DEVICE_HELP}", "device")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix maths natively (AVX512-BF16 or AMX), so that CPU
    autocast speeds training up instead of emulating bf16 in software."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def bf16_unsafe_convolutions(model: torch.nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """The convolutions of ``model`` (kernel over 1 pixel) whose stride is longer than their input
    map's side at ``input_size`` (channels, height, width), e.g. ResNet's layer4 at 16 px: oneDNN's
    bfloat16 weight gradient for them reads memory it did not write (torch 2.14 on AVX-512/AMX
    CPUs: values up to 1e37 or NaN, different on every call; a 1-4 px grid of kernels and strides
    showed no other case), so CPU training of such a model stays in float32. Found by one float32
    forward of a zero image."""
    found: list[str] = []

    def check(name: str) -> Any:
        def hook(conv: torch.nn.Conv2d, inputs: Any, _output: torch.Tensor) -> None:
            sides = inputs[0].shape[-2:]
            too_long = any(stride > side for stride, side in zip(conv.stride, sides, strict=True))
            if too_long and max(conv.kernel_size) > 1:
                found.append(name)

        return hook

    handles = [
        m.register_forward_hook(check(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def autocast_for(device: torch.device, enabled: bool, training: bool = False) -> Any:
    """Mixed precision: fp16/bf16 on GPU; bf16 for CPU training where the CPU has native bf16
    (evaluation on CPU stays float32, so reported accuracies match the exported expert's)."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and enabled and training and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def busy_cores_elsewhere(window_s: float = 0.3) -> float | None:
    """How many CPU cores other processes keep busy now: the machine's busy time over a short
    window (``/proc/stat``) minus this process's own (``/proc/self/stat``), in cores. ``None``
    where Linux's counters are not there. Call it while this process is idle."""
    import os
    import time

    def sample() -> tuple[float, float, float]:
        with open("/proc/stat") as stat:
            fields = [float(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        times = os.times()
        return sum(fields) - idle, sum(fields), times.user + times.system

    try:
        busy0, total0, own0 = sample()
        time.sleep(window_s)
        busy1, total1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    ticks = total1 - total0
    if ticks <= 0:
        return None
    cores = os.cpu_count() or 1
    wall = ticks / cores / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    busy = (busy1 - busy0) / ticks * cores  # cores busy, this process included
    own = (own1 - own0) / wall if wall > 0 else 0.0
    return max(0.0, busy - own)


def threads_beside_load(threads: int, busy_elsewhere: float | None) -> int:
    """Torch threads that fit beside other processes' load: ``threads`` on a quiet machine, fewer
    when others keep cores busy. Two processes that each run a thread per core slow each other
    by up to 10x (spinning OpenMP threads wait on preempted ones), far more than sharing the
    cores fairly costs."""
    import os

    if busy_elsewhere is None:
        return threads
    free = (os.cpu_count() or 1) - busy_elsewhere
    return max(1, min(threads, int(free + 0.5)))
