"""Activates the `sgl_kernel` stand-in (sgl_kernel_standin.py) in every Python process that has this
directory on its PYTHONPATH and runs with SGLANG_USE_CPU_ENGINE=1.

Python imports `sitecustomize` at startup (module `site`) from the first sys.path entry that has
one, and PYTHONPATH entries come first. SGLang starts its scheduler and detokenizer with
multiprocessing's *spawn*: fresh interpreters that inherit the environment, so they run this file
too, before SGLang's code imports `sgl_kernel` at module level. Usage:

    SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=tests/support/sglang_standin .venv-sglang/bin/python ...

What it does: installs a meta-path finder for the one module name `sgl_kernel` (cheap: nothing is
imported until SGLang imports `sgl_kernel`). On that import the real package is tried first; if it
loads (a CPU build of sgl-kernel) it is used as is, with `assign_req_to_token_pool_cpu` filled in
(the stand-in's names) only where missing. If it cannot load (the PyPI CUDA build: no libcuda.so.1), `sgl_kernel` becomes a
stub module holding only the stand-in functions (`sgl_kernel.IS_STANDIN` is True), so any other
`from sgl_kernel import X` still fails with ImportError as before.
Without SGLANG_USE_CPU_ENGINE=1 this file does nothing.

Python runs only the first `sitecustomize` on sys.path: if the interpreter had one of its own it
would be shadowed; this one chains to the next `sitecustomize` on sys.path, if any.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

_NAME = "sgl_kernel"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _standin_module(why: str) -> types.ModuleType:
    if _HERE not in sys.path:
        sys.path.append(_HERE)
    import sgl_kernel_standin as standin

    mod = types.ModuleType(_NAME, f"STAND-IN for sgl_kernel (real package unavailable: {why})")
    mod.__file__ = standin.__file__
    mod.IS_STANDIN = True
    mod.CALLS = standin.CALLS
    for name in standin.__all__:
        setattr(mod, name, getattr(standin, name))
    return mod


class _Loader(importlib.abc.Loader):
    def __init__(self, real_spec: importlib.machinery.ModuleSpec | None) -> None:
        self.real_spec = real_spec

    def create_module(self, spec):  # the module is built in exec_module
        return None

    def exec_module(self, module) -> None:
        real = None
        why = "not installed"
        if self.real_spec is not None and self.real_spec.loader is not None:
            try:
                real = importlib.util.module_from_spec(self.real_spec)
                sys.modules[_NAME] = real
                self.real_spec.loader.exec_module(real)
            except Exception as e:  # CUDA build without a GPU: OSError/ImportError (libcuda.so.1)
                why = f"{type(e).__name__}: {e}"
                real = None
                for name in [n for n in sys.modules if n == _NAME or n.startswith(_NAME + ".")]:
                    del sys.modules[name]
        if real is None:
            sys.modules[_NAME] = _standin_module(why)
        else:
            import sgl_kernel_standin as standin

            for name in standin.__all__:
                if not hasattr(real, name):
                    setattr(real, name, getattr(standin, name))
        # the import system returns sys.modules[_NAME], which is the module set above


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _NAME:
            return None
        real_spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            real_spec = finder.find_spec(fullname, path, target)
            if real_spec is not None:
                break
        spec = importlib.machinery.ModuleSpec(_NAME, _Loader(real_spec))
        if real_spec is not None:
            spec.submodule_search_locations = real_spec.submodule_search_locations
        return spec


def _chain_next_sitecustomize() -> None:
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == _HERE:
            continue
        if os.path.isfile(os.path.join(entry, "sitecustomize.py")):
            spec = importlib.util.spec_from_file_location("_next_sitecustomize", os.path.join(entry, "sitecustomize.py"))
            if spec and spec.loader:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1" and not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
    if _HERE not in sys.path:
        sys.path.append(_HERE)

_chain_next_sitecustomize()
