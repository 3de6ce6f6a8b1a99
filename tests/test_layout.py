"""The package layout: model files apart from the tools, old import paths still valid, size limits kept."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import modeling_deepln

PACKAGE = Path(modeling_deepln.__file__).resolve().parent
MODEL_FILES = {"configuration_deepln.py", "residual_deepln.py", "init_deepln.py", "layers_deepln.py",
               "modeling_deepln_bert.py", "modeling_deepln_gpt.py"}  # fmt: skip


@pytest.mark.parametrize("old, new", sorted(modeling_deepln.MOVED.items()))
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_from_package_import_of_moved_module():
    from modeling_deepln import data, layers_deepln  # noqa: F401  (old style)
    from modeling_deepln.model import layers_deepln as new

    assert layers_deepln is new and data.__name__ == "modeling_deepln.training.data"


def test_model_folder_is_exactly_the_remote_code():
    """``model/`` holds the files save_pretrained copies; they import only stdlib, torch, transformers, siblings."""
    files = {p.name for p in (PACKAGE / "model").glob("*.py")} - {"__init__.py"}
    assert files == MODEL_FILES
    for name in files:
        tree = ast.parse((PACKAGE / "model" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module and f"{node.module}.py" in MODEL_FILES, (name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = [a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import) else [
                    node.module.split(".")[0]]
                for root in roots:
                    assert root in {"torch", "transformers", "math", "dataclasses", "typing", "__future__",
                                    "warnings", "difflib", "functools", "collections"}, (name, root)


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_long_functions_or_modules():
    """The layout issue's limits: no function over ~80 lines, no module over ~600."""
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert source.count("\n") <= 600, f"{path.relative_to(PACKAGE)} has {source.count(chr(10))} lines"
        for fn in _functions(ast.parse(source)):
            length = fn.end_lineno - fn.lineno + 1
            assert length <= 80, f"{path.relative_to(PACKAGE)}:{fn.lineno} {fn.name} is {length} lines"
