"""Instance norm, per-sample affine map, residual add and leaky ReLU in one fused CPU pass.

``norm_act(x, scale, shift, residual=r, slope=s)`` computes
``leaky_relu(instance_norm(x) * scale[:, :, None, None] + shift[:, :, None, None] + r, s)``.
Written as separate PyTorch operations (:func:`reference_norm_act`) that is four or five
passes over the features forward and as many backward; the residual blocks run it twice per
block, and at the ``cpu`` preset's widths those passes cost about as much as the
convolutions. The C++ kernel in ``csrc/norm_act.cpp`` does it in two passes forward (the
statistics, then the output) and two backward, in NCHW or channels-last layout.

No library offers this: torch's own instance norm takes per-channel (not per-sample) affine
parameters and leaves the activation and the residual to separate passes, and oneDNN's fused
normalisation post-ops are not reachable from PyTorch's CPU instance norm.

The kernel is compiled once per machine with the compiler the machine has (``make venv``
runs ``python -m segrenorm.models.nn.norm_act``) and cached under
``$SEGRENORM_KERNEL_DIR`` (default ``~/.cache/segrenorm/kernels``). Where it cannot be built
or loaded, or for CUDA tensors, tracing, export or ``torch.compile``, the reference
composition runs instead; also on NCHW features when torch uses more than one thread, since
the kernel runs on the calling thread (it is used on channels-last features, and in the
trainer's one-thread direction workers). ``SEGRENORM_FUSED=0`` forces the composition.
Both compute the same function (to float rounding; tests compare them to 1e-5).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from segrenorm.models.nn.renorm import modulated_instance_norm

__all__ = ["fused_kernel", "kernel_status", "norm_act", "reference_norm_act", "use_fused"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "norm_act.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"tried": False, "module": None, "error": None}


def reference_norm_act(
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    *,
    residual: Tensor | None = None,
    slope: float | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """The composition the fused kernel replaces, as separate PyTorch operations.

    Args:
        x: features (B, C, H, W).
        scale: per-sample, per-channel multipliers (B, C).
        shift: offsets (B, C).
        residual: added after the affine map (B, C, H, W), or None.
        slope: leaky ReLU slope (0 is ReLU), or None for no activation.
        eps: added to the variance.

    Returns:
        (B, C, H, W) tensor.
    """
    out = modulated_instance_norm(x, scale, shift, eps)
    if residual is not None:
        out = out + residual
    if slope is not None:
        out = F.leaky_relu(out, slope, inplace=True)
    return out


def _cache_key() -> str:
    """Source, torch, Python and CPU: a kernel built with ``-march=native`` fits one machine."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    digest.update(platform.machine().encode())
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = [line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")]
        digest.update((flags[0] if flags else "").encode())
    return digest.hexdigest()[:16]


def kernel_dir() -> Path:
    """Where the compiled kernel is cached (``$SEGRENORM_KERNEL_DIR`` or the user cache)."""
    root = os.environ.get("SEGRENORM_KERNEL_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "segrenorm" / "kernels"
    return base / f"norm_act-{_cache_key()}"


def _build() -> ModuleType:
    from torch.utils import cpp_extension  # imported here: it is slow and rarely needed

    folder = kernel_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # The build runs ninja; the one pip installs sits next to this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    # No -fopenmp: the kernel runs on the calling thread (a second OpenMP team inside the
    # extension made it several times slower); -fopenmp-simd only honours its simd loops.
    flags = ["-O3", "-fopenmp-simd"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    return cpp_extension.load(
        name=f"segrenorm_norm_act_{_cache_key()}",
        sources=[str(SOURCE)],
        extra_cflags=flags,
        build_directory=str(folder),
        verbose=False,
    )


def fused_kernel() -> ModuleType | None:
    """The compiled kernel module (built on first use), or None where it is unavailable."""
    if os.environ.get("SEGRENORM_FUSED", "1") == "0":
        return None
    if _STATE["tried"]:
        return _STATE["module"]
    with _LOCK:
        if not _STATE["tried"]:
            try:
                _STATE["module"] = _build()
            except Exception as exc:  # any build or load failure: the reference path runs
                _STATE["error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
                log.warning(
                    "segrenorm's fused norm kernel is unavailable (%s); using the slower "
                    "PyTorch composition. Set SEGRENORM_FUSED=0 to silence this.",
                    _STATE["error"],
                )
            _STATE["tried"] = True
    return _STATE["module"]


def kernel_status() -> str:
    """One line: whether the fused kernel is in use, and why not."""
    if os.environ.get("SEGRENORM_FUSED", "1") == "0":
        return "fused norm kernel: off (SEGRENORM_FUSED=0)"
    module = fused_kernel()
    if module is None:
        return f"fused norm kernel: unavailable ({_STATE['error']})"
    return f"fused norm kernel: in use ({kernel_dir()})"


def use_fused(x: Tensor) -> bool:
    """True when :func:`norm_act` will run the kernel for ``x``.

    Called twice per residual block, so the cheap tests come first.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if not channels_last:
        if not x.is_contiguous():
            return False
        if torch.get_num_threads() > 1:
            # The kernel runs on one thread: on NCHW features torch's multi-threaded norm
            # passes are as fast (measured, BENCHMARKS.md); channels-last ones they copy.
            return False
    if torch._C._get_tracing_state() is not None or torch.compiler.is_compiling():
        return False  # jit.trace and the TorchScript ONNX exporter; dynamo and torch.export
    if torch.onnx.is_in_onnx_export():
        return False
    return fused_kernel() is not None


def norm_act(
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    *,
    residual: Tensor | None = None,
    slope: float | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Fused instance norm + per-sample affine + residual + leaky ReLU (see the module doc).

    Takes the arguments of :func:`reference_norm_act` (``x`` NCHW-contiguous or
    channels-last) and returns the same tensor, in ``x``'s layout; it runs that composition
    where the kernel does not apply (:func:`use_fused`).
    """
    if not use_fused(x):
        return reference_norm_act(x, scale, shift, residual=residual, slope=slope, eps=eps)
    if residual is not None and residual.shape != x.shape:
        return reference_norm_act(x, scale, shift, residual=residual, slope=slope, eps=eps)
    module = fused_kernel()
    assert module is not None  # use_fused() checked it
    # A C++ autograd function: its backward runs without the Python interpreter (and its GIL).
    act, negative = slope is not None, float(slope or 0.0)
    return module.norm_act(x, scale, shift, residual, act, negative, eps)


def main() -> int:
    """Build (or find) the kernel now and say where it is; exit 0 even when it cannot."""
    print(kernel_status())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
