"""Unlearning methods. ``models.unlearning.params`` is torch-free, so this package's ``__init__`` must be too:
the method functions and the registry load (with torch) on first attribute access (PEP 562)."""

from typing import Any

_LAZY = {
    "ugradsl_plus", "ugradsl", "finetune", "gradient_ascent", "random_label", "salun", "retrain",
    "register_method", "get_method", "list_methods", "run_method", "Method",
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from models.unlearning import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'models.unlearning' has no attribute {name!r}")
