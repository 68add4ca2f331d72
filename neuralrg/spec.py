"""Plain-data recipes for objects: "<module>:<qualname>" class paths (the bottom of the import graph)."""
from __future__ import annotations

import importlib
from typing import Any


def object_path(obj: Any) -> str:
    """"<module>:<qualname>" of a class or function."""
    return f"{obj.__module__}:{obj.__qualname__}"


def import_object(path: str, what: str = "class") -> Any:
    """The object named by "<module>:<qualname>" (or a dotted "<module>.<name>"); ValueError if absent."""
    path = str(path)
    module, qualname = path.split(":", 1) if ":" in path else (path.rpartition(".")[0], path.rpartition(".")[2])
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"{what} {path!r} cannot be imported: {exc}") from None
    return obj


#: floating dtypes by the names configs and checkpoints use
DTYPES = {"float32": "float32", "float64": "float64"}


def parse_dtype(name: object, what: str = "dtype"):
    """torch.float32 / torch.float64 from "float32" / "float64"; ValueError naming ``what`` otherwise."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"{what} must be one of {sorted(DTYPES)}, got {name!r}")
    return getattr(torch, DTYPES[name])


def dtype_name(dtype) -> str:
    """"float32" / "float64" for a torch dtype."""
    return str(dtype).replace("torch.", "")
