"""The ``push`` and ``pull`` subcommands."""

from __future__ import annotations

from pathlib import Path

from orthoguard.hub.adapters import DEFAULT_PREFIX
from orthoguard.hub.safety import HubError
from orthoguard.hub.transfer import pull_adapter, push_adapters


# --------------------------------------------------------------------------------------------------------
# Command line


def _parse_adapters(specs: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise HubError(f"--adapter expects NAME=PATH, got '{spec}'")
        if name in adapters:
            raise HubError(f"--adapter: name '{name}' given twice")
        adapters[name] = Path(path)
    return adapters


def cmd_push(args) -> None:
    adapters = _parse_adapters(args.adapter)
    urls = push_adapters(args.namespace, adapters, public=args.public, repo_prefix=args.prefix, run_dir=args.run_dir)
    visibility = "public" if args.public else "private"
    for name, url in zip(adapters, urls):
        print(f"{name}: {url} ({visibility})")


def cmd_pull(args) -> None:
    dest = args.dest or Path("adapters") / args.repo_id.split("/")[-1]
    path = pull_adapter(args.repo_id, dest, revision=args.revision)
    print(f"{args.repo_id} -> {path}")


def register_cli(subparsers) -> None:
    """Add the ``push`` and ``pull`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("push", help="upload LoRA adapters to the Hugging Face Hub (private unless --public)")
    p.add_argument("--namespace", required=True, help="hub user or organisation")
    p.add_argument("--adapter", action="append", required=True, metavar="NAME=PATH",
                   help="adapter folder to upload as repo NAMESPACE/PREFIX-NAME (repeatable)")
    p.add_argument("--run-dir", "--run_dir", dest="run_dir",
                   help="run directory whose config, results and loss logs go into the model cards")
    p.add_argument("--public", action="store_true",
                   help="create public repositories (default: private; attack adapters remove safety behaviour)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"repository name prefix (default: {DEFAULT_PREFIX}; '' for none)")
    p.set_defaults(func=cmd_push)

    p = subparsers.add_parser("pull", help="download an adapter (json, safetensors and markdown files only)")
    p.add_argument("repo_id", metavar="REPO_ID", help="NAMESPACE/NAME")
    p.add_argument("--dest", help="folder to create (default: adapters/NAME)")
    p.add_argument("--revision", help="branch, tag or commit")
    p.set_defaults(func=cmd_pull)
