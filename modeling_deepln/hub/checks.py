"""What a model folder must hold before it goes to the Hub. Each check returns the files it vouches for, or raises
:class:`PublishError` with a message that says what is wrong and what to do.

* Weights: safetensors only (``model.safetensors``, or ``model.safetensors.index.json`` + its shards). The header
  is read as the format defines it (8-byte little-endian length ``n``, ``n`` bytes of JSON, then the tensor data):
  every tensor's ``data_offsets`` must match ``dtype`` x ``shape``, and the data must end exactly at the end of the
  file, so a truncated or padded copy is caught without loading a tensor. ``safetensors.safe_open`` then opens it.
* ``config.json``: ``auto_map`` has every entry of the family's complete map (``AutoConfig``, ``AutoModel`` and
  each head), and each entry names a class defined in a shipped file.
* Remote code: the files named by ``auto_map`` and, recursively, their ``from .name import X`` imports, parsed with
  :mod:`ast`. The packages transformers' remote-code loader will require on the user's machine
  (``transformers.dynamic_module_utils.get_imports``, the list its ``check_imports`` checks) may only be ``torch``,
  ``transformers`` or the standard library; relative imports must be flat ``from .name import X`` of a shipped file
  (``from . import x`` and ``from .a.b import X`` are not copied by the loader, which follows only
  ``from .name import`` lines: ``get_relative_imports`` in the same module).
* Tokenizer: ``tokenizer_config.json`` and the vocabulary files; it must load and fit the model's vocabulary.
"""

from __future__ import annotations

import ast
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

from ..errors import DeepLNInputError

__all__ = [
    "PublishError",
    "WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "TOKENIZER_FILES",
    "read_safetensors_header",
    "check_weights",
    "check_auto_map",
    "check_remote_code",
    "check_tokenizer",
]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
TOKENIZER_FILES = (
    "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "chat_template.jinja",
)  # fmt: skip
"""The files ``save_pretrained`` of a (fast or slow) tokenizer may write; the ones present are shipped."""
_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
                     "sentencepiece.bpe.model")  # fmt: skip
REMOTE_CODE_PACKAGES = frozenset({"torch", "transformers"}) | frozenset(sys.stdlib_module_names)
"""Top-level modules remote code may import: what every user of ``trust_remote_code=True`` has."""
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
_RESAVE = "re-save it with model.save_pretrained(folder) (deepln writes safetensors) or copy the file again"


class PublishError(DeepLNInputError):
    """The folder cannot be published as it is (the message says what to fix); ``deepln publish`` exits with 2."""


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, after checking that the file is exactly as long as it declares."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PublishError(f"{path} is not a safetensors file ({size} bytes); {_RESAVE}.")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise PublishError(f"{path} is truncated: its header declares {n} bytes, the file has {size}; {_RESAVE}.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PublishError(f"{path} has a corrupt header ({exc}); {_RESAVE}.") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = 0
    for name, info in tensors.items():
        begin, stop = info["data_offsets"]
        want = math.prod(info["shape"]) * _DTYPE_BYTES.get(info["dtype"], 0)
        if stop - begin != want and info["dtype"] in _DTYPE_BYTES:
            raise PublishError(f"{path}: tensor {name!r} ({info['dtype']} {info['shape']}) has {stop - begin} "
                               f"bytes instead of {want}; the file is corrupt, {_RESAVE}.")  # fmt: skip
        end = max(end, stop)
    if 8 + n + end != size:
        raise PublishError(f"{path} is {'truncated' if 8 + n + end > size else 'longer than its header says'}: "
                           f"expected {8 + n + end} bytes, found {size}; {_RESAVE}.")  # fmt: skip
    return tensors


def _open_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # the library's own verdict (e.g. overlapping offsets)
        raise PublishError(f"safetensors cannot open {path}: {exc}; {_RESAVE}.") from None


def check_weights(folder: Path) -> tuple[list[str], int]:
    """The weight files to ship and the number of stored parameters (tied copies are stored once)."""
    index = folder / WEIGHTS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if not shards or missing:
            raise PublishError(f"{index} names shards that are not in the folder: {missing or 'none listed'}; "
                               "copy them next to it or re-save the model with save_pretrained.")  # fmt: skip
        files = [WEIGHTS_INDEX_NAME, *shards]
    elif (folder / WEIGHTS_NAME).is_file():
        files, weight_map = [WEIGHTS_NAME], None
    else:
        pickled = [p for p in PICKLED_WEIGHTS if (folder / p).is_file()]
        hint = (f" It holds only {', '.join(pickled)}: load it and call model.save_pretrained(folder) to write "
                "safetensors (pickles are never published)." if pickled else
                " Point deepln publish at the output folder of deepln pretrain/finetune (or a save_pretrained folder).")
        raise PublishError(f"No weights in {folder}: {WEIGHTS_NAME} is missing.{hint}")  # fmt: skip
    parameters = 0
    for name in files[1:] if weight_map is not None else files:
        tensors = read_safetensors_header(folder / name)
        _open_safetensors(folder / name)
        parameters += sum(math.prod(t["shape"]) for t in tensors.values())
        if weight_map is not None:
            absent = sorted(k for k, shard in weight_map.items() if shard == name and k not in tensors)
            if absent:
                raise PublishError(f"{folder / name} lacks tensors its index lists ({absent[:3]}...); {_RESAVE}.")
    return files, parameters


def expected_auto_map(model_type: str) -> dict[str, str] | None:
    """The complete ``auto_map`` deepln writes for a model type (None for a model type deepln does not know)."""
    from ..model.configuration_deepln import DeepLNBertConfig, DeepLNGPTConfig

    return {c.model_type: dict(c._deepln_auto_map) for c in (DeepLNBertConfig, DeepLNGPTConfig)}.get(model_type)


def check_auto_map(config: dict[str, Any]) -> dict[str, str]:
    """``config.json``'s ``auto_map``, checked to hold every entry of the family's complete map."""
    auto_map = config.get("auto_map")
    want = expected_auto_map(config.get("model_type", "")) or {}
    if not isinstance(auto_map, dict) or "AutoConfig" not in auto_map:
        raise PublishError('config.json has no "auto_map" (or no "AutoConfig" in it), so trust_remote_code=True '
                           f'cannot find the model code; add "auto_map": {json.dumps(want or {"AutoConfig": "..."})} '
                           "to config.json, or re-save the model with deepln's save_pretrained.")  # fmt: skip
    missing = {k: v for k, v in want.items() if k not in auto_map}
    if missing:
        raise PublishError(f"config.json's auto_map lacks {sorted(missing)}: AutoModel* would fail on those classes. "
                           f"Add {json.dumps(missing)} to its \"auto_map\".")  # fmt: skip
    return auto_map


def _imports(tree: ast.AST) -> list[tuple[int, int, str | None, list[str]]]:
    """``(line, level, module, names)`` of every import statement, wherever it is (try blocks included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, 0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.level, node.module, [a.name for a in node.names]))
    return found


def _check_one_import(where: str, level: int, module: str | None, names: list[str], folder: Path,
                      required: set[str]) -> str | None:  # fmt: skip
    """The sibling file a relative import needs (or None); raises on an import the Hub copy cannot satisfy."""
    if level:
        if level != 1 or not module or "." in module:
            target = "." * level + (module or "") + (f" import {', '.join(names)}" if not module else "")
            raise PublishError(f"{where}: 'from {target} ...' is not a flat sibling import; transformers only copies "
                               "files imported as 'from .name import X'. Rewrite it that way.")  # fmt: skip
        if not (folder / f"{module}.py").is_file():
            raise PublishError(f"{where}: imports .{module}, but {module}.py is not in the folder; copy it there "
                               "(save_pretrained copies it when the class is saved from the installed package).")
        return f"{module}.py"
    root = (module or "").split(".")[0]
    if root not in required:  # e.g. inside try/except: transformers' loader does not require it
        return None
    if root == "modeling_deepln":
        raise PublishError(f"{where}: imports {module}, which Hub users do not have (remote code must be "
                           "self-contained); import the sibling file instead ('from .configuration_deepln import ...') "
                           "or re-save the model with save_pretrained, which copies the flat model files.")  # fmt: skip
    if root not in REMOTE_CODE_PACKAGES:
        raise PublishError(f"{where}: imports {module}; remote code may import only torch, transformers and the "
                           "standard library (users would get 'This modeling file requires the following packages'). "
                           "Remove the import or move the code into the model files.")  # fmt: skip
    return None


def check_remote_code(folder: Path, auto_map: dict[str, str]) -> list[str]:
    """The ``.py`` files ``auto_map`` needs, following relative imports; each checked as the module docstring says."""
    from transformers.dynamic_module_utils import get_imports

    pending = {}
    for auto_class, ref in auto_map.items():
        module, _, cls = ref.split("--")[-1].rpartition(".")
        pending.setdefault(f"{module}.py", []).append((auto_class, cls))
    shipped: dict[str, ast.AST] = {}
    queue = list(pending)
    while queue:
        name = queue.pop()
        if name in shipped:
            continue
        path = folder / name
        if not path.is_file():
            raise PublishError(f"config.json's auto_map points to {name}, which is not in {folder}; re-save the model "
                               "with save_pretrained (it copies the model files).")  # fmt: skip
        try:
            shipped[name] = tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as exc:
            raise PublishError(f"{path} does not parse ({exc}); fix or replace the file.") from None
        required = set(get_imports(path))
        for line, level, module, names in _imports(tree):
            sibling = _check_one_import(f"{name}:{line}", level, module, names, folder, required)
            if sibling:
                queue.append(sibling)
    for file, entries in pending.items():
        defined = {n.name for n in ast.walk(shipped[file]) if isinstance(n, ast.ClassDef)}
        for auto_class, cls in entries:
            if cls not in defined:
                raise PublishError(f"config.json's auto_map says {auto_class} is {cls} in {file}, which defines no "
                                   "such class; re-save the model with save_pretrained.")  # fmt: skip
    return sorted(shipped)


def check_tokenizer(folder: Path, vocab_size: int | None) -> list[str]:
    """The tokenizer files to ship, after loading the tokenizer and checking it fits the model's vocabulary."""
    files = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if "tokenizer_config.json" not in files or not any(name in files for name in _VOCABULARY_FILES):
        raise PublishError(f"{folder} holds no tokenizer (tokenizer_config.json and tokenizer.json or vocabulary "
                           "files); save it there: tokenizer.save_pretrained(folder). Users load it with "
                           "AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True).")  # fmt: skip
    from transformers import AutoTokenizer

    try:  # deepln's config classes are registered in this process, so no remote code runs here
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    except Exception as exc:
        raise PublishError(f"The tokenizer in {folder} does not load ({type(exc).__name__}: {exc}); save a working "
                           "one there with tokenizer.save_pretrained(folder).") from None  # fmt: skip
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise PublishError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: "
                           "ids past the embedding matrix would crash; ship the tokenizer the model was trained with.")
    return files
