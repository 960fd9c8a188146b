"""`llm-serve keys create` and `llm-serve usage`: API keys, and what they spent (from the ledger)."""

from __future__ import annotations

import argparse

from llm_serve.cli.common import accept_config
from llm_serve.config import load_config


def cmd_keys_create(args: argparse.Namespace) -> int:
    from llm_serve.router.auth import new_key

    key, digest = new_key()
    print(f"key (shown once; give it to the caller): {key}")
    print("config entry (auth.keys):")
    print(f"  - name: {args.name}\n    key_sha256: {digest}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from llm_serve.router.ledger import Ledger, period_start

    config = load_config(args.config)
    ledger = Ledger(config.ledger.database_url(config.home_path))
    rows = ledger.usage(period_start(args.period), key_name=args.key)
    print(f"{'key':<20} {'model':<32} {'requests':>8} {'errors':>6} {'hits':>6} {'in':>9} {'out':>9} {'cost_usd':>12}")
    for r in rows:
        print(
            f"{r['key_name']:<20} {r['model']:<32} {r['requests']:>8} {r['errors']:>6} {r['cache_hits']:>6} "
            f"{r['prompt_tokens']:>9} {r['completion_tokens']:>9} {r['cost_usd']:>12.6f}"
        )
    if not rows:
        print(f"(no requests this {args.period})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    create = keys.add_parser("create", help="a new random key and the hashed config entry for it")
    create.add_argument("name", help="the key's tenant name")
    create.set_defaults(func=cmd_keys_create)
    usage = sub.add_parser("usage", help="requests, tokens and spend per key and model, from the ledger")
    usage.add_argument("--period", choices=["day", "month", "total"], default="month")
    usage.add_argument("--key", help="one key name only")
    usage.set_defaults(func=cmd_usage)
    accept_config(usage)
