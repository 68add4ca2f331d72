"""The package's layout: imports run one way, and the library below training is free of Lightning/hydra.

Layers (low → high): spec/errors/plotting → physics → flows → checkpoint → sampling → analysis →
training → pipelines. A module may import its own layer or lower ones, never a higher one. The
check parses every module (imports inside functions included), so it is also the command behind
the claim: ``pytest tests/test_layout.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "neuralrg"
LAYERS = {"spec": 0, "errors": 0, "plotting": 0, "physics": 1, "flows": 2, "checkpoint": 3, "sampling": 4,
          "analysis": 5, "training": 6, "pipelines": 7}
NO_FRAMEWORKS = ("physics", "flows", "checkpoint", "sampling", "analysis", "spec", "errors", "plotting")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append(name)
            out += [f"{name}.{a.name}" for a in node.names]  # `from . import samplers`
    return out


def _layer(name: str) -> int | None:
    parts = name.split(".")
    if parts[0] != "neuralrg" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    for p in MODULES:
        mod = _module_name(p)
        if mod == "neuralrg":
            continue
        assert _layer(mod) is not None, f"{mod} is in no layer; add it to LAYERS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_upward_import(path):
    mod = _module_name(path)
    if mod == "neuralrg":  # the lazy public API may name anything
        return
    mine = _layer(mod)
    for name in _imports(path):
        theirs = _layer(name)
        assert theirs is None or theirs <= mine, f"{mod} (layer {mine}) imports {name} (layer {theirs})"


@pytest.mark.parametrize("path", [p for p in MODULES if _module_name(p).split(".")[1:2]
                                  and _module_name(p).split(".")[1] in NO_FRAMEWORKS],
                         ids=lambda p: _module_name(p))
def test_library_is_free_of_lightning_and_hydra(path):
    for name in _imports(path):
        assert not name.split(".")[0] in ("pytorch_lightning", "lightning", "hydra", "omegaconf"), \
            f"{_module_name(path)} imports {name}"


def test_make_demo_trains_and_samples_the_same_run_directory():
    """``make demo`` names its run directory once: train.py and sample.py get the same path even when the
    clock ticks between them (a recursive ``RUN ?= ...$(shell date ...)`` gave them different seconds)."""
    import re
    import shutil
    import subprocess
    import time
    from pathlib import Path

    assert shutil.which("make"), "the README's two commands are make targets"
    root = Path(__file__).resolve().parents[1]
    make = (root / "Makefile").read_text()
    assert re.search(r"^RUN :=", make, re.M), "RUN must be a simply expanded variable"
    for _ in range(3):
        out = subprocess.run(["make", "-n", "-s", "demo"], cwd=root, capture_output=True, text=True).stdout
        dirs = re.findall(r"hydra\.run\.dir=(\S+)", out) + re.findall(r"sample\.py run=(\S+)", out)
        assert len(dirs) == 2 and dirs[0] == dirs[1], out
        time.sleep(0.4)
