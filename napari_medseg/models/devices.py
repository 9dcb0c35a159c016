"""Device choice and mixed precision: CUDA (bf16 autocast where supported, fp16 with a grad scaler otherwise,
channels_last), Apple MPS, or the CPU with a caller-set thread count (bf16 autocast where the CPU computes
bfloat16 natively: the model's forward and backward pass about 1.45x faster, a whole training step 1.17x;
benchmarks/RESULTS.md, issue 18)."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full float32
    use_scaler: bool  # fp16 needs a GradScaler
    channels_last: bool

    @property
    def amp_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "off")  # type: ignore[arg-type]

    def describe(self) -> str:
        """The device in words."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            return f"cuda ({name}, amp {self.amp_name}{', channels_last' if self.channels_last else ''})"
        if self.device.type == "cpu":
            bf16 = ", bf16" if self.amp_dtype == torch.bfloat16 else ""
            return f"cpu ({torch.get_num_threads()} threads{bf16})"
        return self.device.type

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def memory_format(self, spatial_dims: int) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16), where PyTorch's oneDNN runs bfloat16
    convolutions about twice as fast as float32 (elsewhere they are emulated and slower). Linux: the CPU's flags;
    elsewhere oneDNN's own answer (which also says yes for plain AVX512). Read once per process: the Train
    widget's plan line asks on every change of a setting."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - a torch without oneDNN
        return False


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(name: str = "auto", amp: bool = True, channels_last: bool = True) -> DeviceSetup:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` to a ``DeviceSetup``; a missing device is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedsegError("device 'cuda' was asked for but torch sees no CUDA GPU; choose 'cpu' or 'auto'.")
        dev = torch.device(name)
        dtype = None
        if amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return DeviceSetup(dev, dtype, dtype == torch.float16, channels_last)
    if name == "mps":
        if not mps_available():
            raise MedsegError("device 'mps' was asked for but torch sees no Apple GPU; choose 'cpu' or 'auto'.")
        return DeviceSetup(torch.device("mps"), None, False, False)
    if name == "cpu":  # with amp, bf16 autocast where the CPU computes it natively (else emulated: slower)
        dtype = torch.bfloat16 if amp and cpu_bf16_native() else None
        return DeviceSetup(torch.device("cpu"), dtype, False, False)
    raise MedsegError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")


def is_oom(exc: BaseException) -> bool:
    """True for a GPU (or MPS) out-of-memory error."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for inference: ``"auto"`` is CUDA when there is a GPU, else the CPU; an unknown or
    missing device is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise MedsegError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'")
    return dev
