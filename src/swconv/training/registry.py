"""Build networks through the timm registry. ``import swconv.models`` registers the swconv
families; it is imported lazily so that plain timm models work even when it cannot be imported."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import timm
import torch.nn as nn

_import_error: BaseException | None = None
_imported = False


def register_swconv_models() -> BaseException | None:
    """Import ``swconv.models`` once; return the import error (if any) instead of raising."""
    global _imported, _import_error
    if not _imported:
        _imported = True
        try:
            importlib.import_module("swconv.models")
        except Exception as e:  # pragma: no cover - depends on the other packages' state
            _import_error = e
    return _import_error


def create_model(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    err = register_swconv_models()
    if not timm.is_model(name):
        hint = f" (importing swconv.models failed: {err!r})" if err else ""
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown model '{name}'{hint}; similar registered names: {close}")
    return timm.create_model(name, **dict(kwargs or {}))
