"""Compile a C++ kernel at first use and load it with ctypes (no build step at install time).

The source is plain C++17 without torch headers (tensors are passed as data pointers), so a
build takes a couple of seconds with the system compiler and needs neither ninja nor Python
headers. The shared library is cached in torch's extensions directory
(``TORCH_EXTENSIONS_DIR`` or ``torch.utils.cpp_extension.get_default_build_root()``) under a
name that hashes the source, the flags and the processor, so each machine builds once. Where no
compiler is found or the build fails, :func:`load` returns None and warns once; callers then
take their eager PyTorch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

__all__ = ["load", "build_dir"]

FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fno-math-errno")
# per-process cache of loaded libraries, by (name, source, flags): every kernel call looks its
# library up, and the file key (a hash of the source and /proc/cpuinfo, a compiler search) costs
# about 0.2 ms, as much as a whole energy + field of a 12 x 12 lattice
_loaded: dict[tuple, ctypes.CDLL | None] = {}


def build_dir() -> Path:
    """Where compiled kernels are cached (torch's extensions directory)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(root) / "klmgraph"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _processor() -> str:
    # -march=native code must not run on another processor: the key takes the instruction-set
    # flags too, since a model name alone ("AMD EPYC") can cover several generations
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
        described = [line for line in lines if line.startswith(("model name", "cpu family", "model\t", "flags"))]
        if described:
            return "\n".join(described)
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load(name: str, source: str) -> ctypes.CDLL | None:
    """The compiled library of ``source`` (built at first use, then cached), or None.

    Args:
        name: a short name for the library file.
        source: C++17 source with ``extern "C"`` entry points.

    Returns:
        The loaded library, or None (after one warning) when no compiler is found or the build
        fails; the caller falls back to its eager path.
    """
    cached = (name, source, FLAGS)
    if cached in _loaded:
        return _loaded[cached]
    compiler = _compiler()
    key = hashlib.sha256("\n".join([source, " ".join(FLAGS), str(compiler), _processor()]).encode()).hexdigest()[:16]
    library = None
    try:
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX or install g++)")
        target = build_dir() / f"{name}_{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src = Path(tmp) / f"{name}.cpp"
                src.write_text(source)
                out = Path(tmp) / target.name
                result = subprocess.run([compiler, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"{compiler} failed:\n{result.stderr[-2000:]}")
                os.replace(out, target)  # atomic: concurrent first uses never see a partial file
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as error:
        warnings.warn(f"klmgraph: the compiled {name} kernel is unavailable ({error}); using the slower eager "
                      "PyTorch path", RuntimeWarning, stacklevel=3)
    _loaded[cached] = library
    return library
