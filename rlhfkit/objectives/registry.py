"""A named registry, so methods choose their pieces by name (as verl's `register_adv_est`)."""

from __future__ import annotations

from typing import Callable


class Registry(dict):
    """name -> entry; `register(name)` decorates a function, `lookup(name)` names the choices when it fails."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str, **meta) -> Callable:
        def decorate(fn):
            if name in self:
                raise ValueError(f"{self.what} {name!r} is already registered")
            for key, value in meta.items():
                setattr(fn, key, value)
            self[name] = fn
            return fn
        return decorate

    def lookup(self, name: str):
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {sorted(self)}")
        return self[name]
