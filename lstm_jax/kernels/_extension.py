"""Building and loading this package's C++ XLA FFI extensions (the ``"onednn"`` and
``"native"`` forms): one compile command, one loader that refuses a library older than its
source and registers its handlers with :mod:`jax.ffi`."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import jax


def compile_library(source: Path, output: Path, flags: list[str], libs: list[str] = (), *,
                    compiler: str = "g++") -> Path:
    """Compiles one C++ source into a shared library with JAX's FFI headers on the include path.

    Args:
      source: the ``.cc`` file.
      output: the library's path; written atomically (a concurrent loader never sees half a library).
      flags: compiler flags (optimisation, include directories).
      libs: linker arguments, placed after the source (``-L``, ``-l``, ``-Wl,...``).
      compiler: a C++17 compiler.

    Returns:
      ``output``. Raises ``RuntimeError`` naming a missing compiler or the compiler's error.
    """
    tmp = output.with_suffix(f".{os.getpid()}.tmp")
    cmd = [compiler, "-std=c++17", "-shared", "-fPIC", "-w", "-pthread", f"-I{jax.ffi.include_dir()}", *flags,
           str(source), *libs, "-o", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"no C++ compiler {compiler!r}: {e}") from e
    if done.returncode != 0:
        raise RuntimeError(f"compiling {source.name} failed:\n{done.stderr[-4000:]}")
    os.replace(tmp, output)
    print(f"built {output}")
    return output


def load(library: Path, source: Path, targets: dict[str, str], name: str, rebuild: str) -> ctypes.CDLL | str:
    """Loads ``library`` and registers ``targets`` (FFI target name -> exported symbol) for the CPU.

    Returns:
      The loaded library, or a sentence saying why it could not be loaded (missing, older than
      ``source``, or failing to load), naming the extension as ``name`` and saying how to build
      it (``rebuild``).
    """
    if not library.exists():
        return f"the {name} is not built ({library} is missing; {rebuild})"
    if source.exists() and source.stat().st_mtime > library.stat().st_mtime:
        return f"the {name} {library} is older than its source {source.name} ({rebuild})"
    try:
        lib = ctypes.cdll.LoadLibrary(str(library))
    except OSError as e:
        return f"the {name} {library} does not load: {e}"
    for name, symbol in targets.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib
