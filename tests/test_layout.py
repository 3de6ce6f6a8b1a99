"""The package layout: model files apart from the tools, old import paths still valid, size limits kept."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import modeling_deepln

PACKAGE = Path(modeling_deepln.__file__).resolve().parent
MODEL_FILES = {"configuration_deepln.py", "residual_deepln.py", "init_deepln.py", "layers_deepln.py", "decode_deepln.py", "loss_deepln.py",
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
                                    "warnings", "difflib", "functools", "collections", "contextvars",
                                    "contextlib", "concurrent", "weakref"}, (name, root)


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


def test_shared_errors_and_moved_helpers_keep_their_old_import_paths():
    """Errors live in ``errors.py`` and training helpers in modules named for what they hold; old paths still work."""
    from modeling_deepln import errors
    from modeling_deepln.training import args, callbacks, checks, model_config, output_dir, trainer_setup

    assert args.DeepLNInputError is errors.DeepLNInputError and callbacks.NonFiniteError is errors.NonFiniteError
    for module, names in ((model_config, ("build_config", "config_overrides", "model_family")),
                          (output_dir, ("PREPARED_DIR", "check_output_dir", "clear_output_dir", "resume_checkpoint")),
                          (trainer_setup, ("per_device", "schedule_kwargs"))):
        for name in names:
            assert getattr(checks, name) is getattr(module, name), name


def test_feature_packages_take_shared_errors_from_errors_module():
    """No feature package imports the training package just for its error type."""
    for path in PACKAGE.rglob("*.py"):
        if "training" in path.parts:
            continue
        source = path.read_text()
        assert "training.args import DeepLNInputError" not in source, path
        assert "training import DeepLNInputError" not in source, path


INTERNAL_REFERENCE = re.compile(r"\bissues? #?\d+\b|hf-v5|methods\.md|shared/reference|seed 00\d|"
                                r"\[(RECON|UNVERIFIED|EXACT[-A-Z]*)\]", re.IGNORECASE)  # fmt: skip
"""Names of the project's internal process (issue numbers, internal notes) that a user of deepln does not have."""


def _docstring_nodes(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                yield first.value


def test_user_facing_text_names_no_internal_process():
    """Remote code (every line: it ships to each Hub repo), every message, help text and field doc of the package
    (string constants other than module/class/function docstrings), and the shipped configuration files cite
    papers, the README or the code, never internal issues or notes."""
    found = []
    for path in (PACKAGE / "model").glob("*.py"):
        found += [f"{path.name}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                  if INTERNAL_REFERENCE.search(line)]  # fmt: skip
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node) for node in _docstring_nodes(tree)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and INTERNAL_REFERENCE.search(node.value)):  # fmt: skip
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    for path in (PACKAGE.parent / "configuration").rglob("*.json"):
        if INTERNAL_REFERENCE.search(path.read_text()):
            found.append(str(path.relative_to(PACKAGE.parent)))
    assert not found, found
