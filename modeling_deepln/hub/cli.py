"""The ``deepln publish`` subcommand (see :mod:`modeling_deepln.hub.upload`)."""

from __future__ import annotations

import argparse

from ..commands import Subcommand

__all__ = ["SUBCOMMANDS"]


def _add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="FOLDER", help="output folder of deepln pretrain/finetune (or a "
                        "save_pretrained folder with tokenizer and results)")  # fmt: skip
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hub model repository to create/update")
    parser.add_argument("--private", action="store_true",
                        help="create the repository as private (an existing one keeps its visibility)")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if missing)")
    parser.add_argument("--dry-run", metavar="DIR", help="write exactly the files that would be uploaded into DIR "
                        "(an empty or new folder) and upload nothing")  # fmt: skip
    parser.add_argument("--no-metrics", action="store_true", help="publish even if the card has no evaluation results")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    parser.add_argument("--license", help="card license (default: the folder card's, else apache-2.0)")
    parser.add_argument("--base-model", metavar="ORG/NAME", help="card base_model (for fine-tuned models)")
    parser.add_argument("--commit-message", help="commit message of the upload")


def _run_publish(ns: argparse.Namespace) -> int:
    from .upload import publish

    publish(
        ns.folder, ns.repo_id, private=ns.private, revision=ns.revision, dry_run=ns.dry_run,
        require_metrics=not ns.no_metrics, token=ns.token, license=ns.license, base_model=ns.base_model,
        commit_message=ns.commit_message,
    )  # fmt: skip
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "publish": Subcommand(
        "Push a trained model folder to the Hugging Face Hub: safetensors, config with auto_map, remote code, "
        "tokenizer, results and model card; never pickles, checkpoints or caches (--dry-run DIR to inspect).",
        _add_publish_arguments,
        _run_publish,
    ),
}
