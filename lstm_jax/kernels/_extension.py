"""Building and loading this package's C++ XLA FFI extensions (the ``"onednn"`` and
``"native"`` forms): one compile command, one loader that refuses a library older than its
source and registers its handlers with :mod:`jax.ffi`."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp


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


def unavailable(lib: ctypes.CDLL | str, what: str) -> str | None:
    """Why a loaded-or-not extension cannot run in this process (None if it can): ``lib`` is the
    reason it did not load, or JAX's default backend is not the CPU (``what`` runs on the CPU)."""
    if isinstance(lib, str):
        return lib
    if jax.default_backend() != "cpu":
        return f"{what} runs on the CPU and JAX's default backend is {jax.default_backend()!r}"
    return None


def float32_refusal(why: str | None, what: str, params, xs, carry) -> str | None:
    """Why a float32-only form cannot serve these arrays: ``why`` (the extension's
    unavailability), else a dtype other than float32 among them (``what`` takes float32 only)."""
    if why:
        return why
    dtypes = {jnp.dtype(a.dtype) for a in jax.tree_util.tree_leaves((params, xs, carry))}
    if dtypes != {jnp.dtype(jnp.float32)}:
        return f"{what} float32 only, got {sorted(map(str, dtypes))}"
    return None


def call(lib: ctypes.CDLL | str, impl: str, target: str, outputs, *args, aliases=None):
    """``jax.ffi.ffi_call`` of a registered target (run once per element under ``vmap``), or a
    ``RuntimeError`` naming ``impl`` when the extension ``lib`` did not load (then a reason)."""
    if isinstance(lib, str):
        raise RuntimeError(f"impl={impl!r}: {lib}.")
    return jax.ffi.ffi_call(target, outputs, vmap_method="sequential", input_output_aliases=aliases or {})(*args)


def f32(shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)


def build_main(build, argv: list[str], form: str) -> int:
    """``python -m lstm_jax.kernels.<form> [--optional]``: runs ``build()``. With ``--optional``
    a failure prints why and returns 0 (the XLA forms serve instead)."""
    try:
        build()
    except RuntimeError as e:
        if "--optional" not in argv:
            raise
        print(f"lstm_jax: the {form} form is not built, the XLA forms will serve instead: {e}")
    return 0
