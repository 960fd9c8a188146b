"""`llm-serve cache calibrate`: the semantic cache's verifier threshold for a deployment's own labelled pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_serve.cli.common import accept_config, load, say


def cmd_calibrate(args: argparse.Namespace) -> int:
    from llm_serve.router import semantic_calibration as cal

    config = load(args)
    try:
        pairs = cal.read_pairs(Path(args.pairs))
    except cal.PairsError as exc:
        say(str(exc))
        return 2
    embedder = config.embedder(config.cache.semantic.embedding_model)
    if embedder is None:
        say(f"cache.semantic.embedding_model {config.cache.semantic.embedding_model!r} is not in embedding_models")
        return 2
    say(f"{len(pairs)} pairs; embedding them with {embedder.source}")
    cos = cal.cosines(pairs, embedder.source)
    try:
        points, _, shipped = cal.sweep(pairs, cos, config)
    except cal.PairsError as exc:
        say(str(exc))
        return 2
    say(f"verifier: {config.cache.semantic.verifier}")
    chosen = cal.choose(points, args.target_precision)
    print(f"{'threshold':>9} {'precision':>9} {'wilson95':>15} {'recall':>7} {'hits':>5} {'false':>5}")
    for p in points:
        ci = p.interval()
        precision = f"{p.precision:.3f}" if p.precision is not None else "-"
        interval = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-"
        print(
            f"{p.threshold:>9.3f} {precision:>9} {interval:>15} {p.recall:>7.3f} {p.hits:>5} {p.hits - p.true_hits:>5}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cal.write(out / "cache-calibration.json", cal.report(points, chosen, args.target_precision))
    cal.plot(points, chosen, shipped, out / "cache-calibration.png")
    say(f"wrote {out / 'cache-calibration.json'} and {out / 'cache-calibration.png'}")
    if chosen is None:
        say(f"no threshold reaches precision {args.target_precision} on these pairs; keep the cache off or add pairs")
        return 1
    low, high = chosen.interval() or (0.0, 0.0)
    print(
        f"verifier_threshold: {chosen.threshold:.3f}  (precision {chosen.precision:.3f}, Wilson 95 % "
        f"{low:.3f}-{high:.3f}; recall {chosen.recall:.3f}; shipped default {shipped:.3f})"
    )
    print("set it as cache.semantic.verifier_threshold in the config")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="the semantic cache").add_subparsers(dest="cache_cmd", required=True)
    calibrate = cache.add_parser(
        "calibrate", help="precision and recall of the semantic cache's verifier on your labelled pairs"
    )
    calibrate.add_argument("--pairs", required=True, help='JSONL of {"a": ..., "b": ..., "same": true|false}')
    calibrate.add_argument("--target-precision", type=float, default=0.98)
    calibrate.add_argument("--out", default=".", help="folder for cache-calibration.json and .png")
    calibrate.set_defaults(func=cmd_calibrate)
    accept_config(calibrate)
