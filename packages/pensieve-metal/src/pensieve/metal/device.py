"""Which device MLX computes on, described for humans and for /health."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import mlx.core as mx


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    kind: str
    """`gpu` (Metal on macOS, CUDA on Linux) or `cpu`."""
    backend: str
    """`metal`, `cuda` or `cpu`."""
    name: str
    mlx_version: str
    platform: str

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "backend": self.backend,
            "name": self.name,
            "mlx_version": self.mlx_version,
            "platform": self.platform,
        }


def _backend() -> str:
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "cpu"


def device_info() -> DeviceInfo:
    backend = _backend()
    kind = "cpu" if backend == "cpu" else "gpu"
    try:
        name = str(mx.device_info().get("device_name", "")) if kind == "gpu" else ""
    except Exception:  # device_info is backend-specific; a missing name is not an error
        name = ""
    return DeviceInfo(
        kind=kind,
        backend=backend,
        name=name or platform.processor() or platform.machine(),
        mlx_version=mx.__version__,
        platform=f"{platform.system()} {platform.machine()}",
    )


def select_device(prefer: str = "auto") -> DeviceInfo:
    """Make MLX's default device the best available one (or the one asked for)."""
    info = device_info()
    if prefer == "cpu" or (prefer == "auto" and info.kind == "cpu"):
        mx.set_default_device(mx.cpu)
    else:
        mx.set_default_device(mx.gpu)
    return info
