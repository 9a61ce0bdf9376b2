"""Griffe extension: document the public names of ``lipzoo`` as Python sees them at run time.

Two things a static reader gets wrong without help:

* A package that loads its names on first use (PEP 562: ``lipzoo/__init__.py``,
  ``lipzoo/hub/__init__.py``) maps each public name to the module that defines it in a literal
  ``_EXPORTS`` dict and builds ``__all__`` from it, so neither the names nor ``__all__`` are
  visible statically. The mapping is read from the source (``ast.literal_eval``, nothing is
  imported), each name becomes an alias of the object in its defining module, and the names become
  the module's exports. The pages follow ``_EXPORTS`` wherever the defining modules move.
* ``from lipzoo.models.export import export`` in a package ``__init__`` binds the function over the
  submodule of the same name; Griffe keeps the submodule. Every exported name that is a submodule
  holding a member of that name becomes an alias of that member.
* ``load = load_checkpoint`` publishes a function under a second name; Griffe sees an attribute
  without a docstring. A public attribute whose value is the bare name of a function or class of the
  same module becomes an alias of it, documented from its docstring.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


def _lazy_exports(module: griffe.Module) -> dict[str, str] | None:
    """The literal ``_EXPORTS`` mapping of a module's source, or None when it has none."""
    if "_EXPORTS" not in module.members or module.filepath is None or isinstance(module.filepath, list):
        return None
    for node in ast.parse(module.filepath.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{module.filepath}: _EXPORTS is not a literal dict; update docs/api/lazy_exports.py.")


def _modules(module: griffe.Module) -> list[griffe.Module]:
    found = [module]
    for sub in module.modules.values():
        if isinstance(sub, griffe.Module):
            found.extend(_modules(sub))
    return found


def _rebind_renamed(module: griffe.Module) -> None:
    for name, member in list(module.members.items()):
        if name.startswith("_") or member.is_alias or not member.is_attribute:
            continue
        value = member.value
        target = module.members.get(value) if isinstance(value, str) else \
            module.members.get(value.name) if isinstance(value, griffe.ExprName) else None
        if target is not None and (target.is_alias or target.is_function or target.is_class):
            module.set_member(name, griffe.Alias(name, target, parent=module))


class LazyExports(griffe.Extension):
    """Adds lazily imported names as aliases, and rebinds exported names that shadow their submodule."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path != "lipzoo":
            return
        for module in _modules(pkg):
            _rebind_renamed(module)
            exports = _lazy_exports(module)
            if exports is not None:
                for name, source in exports.items():
                    module.set_member(name, griffe.Alias(name, f"{source}.{name}", parent=module))
                module.exports = list(exports)
            for name in list(module.exports or ()):
                member = module.members.get(name)
                if isinstance(member, griffe.Module) and name in member.members:
                    module.set_member(name, griffe.Alias(name, member.members[name], parent=module))
