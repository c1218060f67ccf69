"""``mirage-ray``: model files and tokens.

mirage-ray models list | fetch [NAME ...] [--all] | verify [NAME ...] [--pin]
mirage-ray token --sub NAME [--ttl 3600]
mirage-ray settings            (every setting with its current value)
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from mirage_ray.config import MirageSettings, load_settings
from mirage_ray.models_cli import cmd_models_fetch, cmd_models_list, cmd_models_verify
from mirage_ray.security import ConfigurationError, TokenIssuer


def cmd_token(settings: MirageSettings, subject: str, ttl_s: int) -> int:
    """Print a token signed with the configured HMAC secret (MIRAGE_JWT_SECRET)."""
    if not settings.jwt_secret:
        print(
            "mirage-ray token needs MIRAGE_JWT_SECRET (the server's HMAC key). For a local `make run` without a "
            "secret, the page at / fetches its own token.",
            file=sys.stderr,
        )
        return 2
    try:
        issuer = TokenIssuer(settings.jwt_secret, settings.jwt_algorithm, settings.jwt_audience, settings.jwt_issuer)
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(issuer.issue(subject, ttl_s))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirage-ray", description="Mirage on Ray: models and tokens")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list, fetch or verify the production model files")
    models_sub = models.add_subparsers(dest="action", required=True)
    models_sub.add_parser("list", help="every file: where it lives, present/verified, size, licence")
    fetch = models_sub.add_parser("fetch", help="download with progress, resume, lock, sha256 and atomic rename")
    fetch.add_argument("names", nargs="*")
    fetch.add_argument("--all", action="store_true", dest="all_")
    verify = models_sub.add_parser("verify", help="rehash files against their published sha256")
    verify.add_argument("names", nargs="*")
    verify.add_argument("--pin", action="store_true", help="record the hash of files that have no published one")
    token = sub.add_parser("token", help="print a JWT for the configured MIRAGE_JWT_SECRET")
    token.add_argument("--sub", required=True, help="the subject (user id) the token is for")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    sub.add_parser("settings", help="print every setting with its current value (env MIRAGE_*)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:
        print(f"invalid MIRAGE_* setting:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "token":
        return cmd_token(settings, args.sub, args.ttl)
    if args.command == "settings":
        print(json.dumps(settings.model_dump(mode="json", exclude={"jwt_secret"}), indent=2))
        return 0
    if args.action == "list":
        return cmd_models_list(settings)
    if args.action == "fetch":
        return cmd_models_fetch(settings, args.names, args.all_)
    return cmd_models_verify(settings, args.names, args.pin)


if __name__ == "__main__":
    sys.exit(main())
