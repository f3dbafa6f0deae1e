"""The ``purelearn`` command: run the chapter's experiments, write numbers and figures.

    purelearn {paths,optimizers,activations,init,batchnorm,weight-decay,dropout,search,tour}
              [--out DIR] [--seed N] [--data auto|embedded|DIR] [--quick]

Each experiment writes ``DIR/<name>.json`` and ``DIR/<name>.png``; ``tour``
runs all eight and writes ``DIR/report.html``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from purelearn.experiments import EXPERIMENTS

__all__ = ["main", "run_experiment"]


def run_experiment(name: str, out: Path, *, seed: int, data: str, quick: bool) -> dict:
    """Run one experiment; write its JSON and PNG under ``out``; return its numbers."""
    from purelearn import plotting

    result = EXPERIMENTS[name](seed=seed, data=data, quick=quick)
    result["quick"] = quick
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plotting.save_figure(name, result, out / f"{name}.png")
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="purelearn",
        description="Reproduce the experiments of the textbook's chapter on training techniques.",
    )
    parser.add_argument(
        "experiment",
        choices=[*EXPERIMENTS, "tour"],
        help="one experiment, or 'tour' for all of them and an HTML report",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("purelearn-out"),
        help="output directory (default: ./purelearn-out)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--data",
        default="auto",
        help="'auto' (full MNIST if cached, else the embedded sample), "
        "'embedded', or a directory of MNIST IDX files",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shrink every experiment to a smoke test"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from purelearn import plotting

    args.out.mkdir(parents=True, exist_ok=True)
    names = list(EXPERIMENTS) if args.experiment == "tour" else [args.experiment]
    results = {}
    start = time.perf_counter()
    for name in tqdm(names, desc="purelearn", unit="experiment", disable=len(names) == 1):
        results[name] = run_experiment(
            name, args.out, seed=args.seed, data=args.data, quick=args.quick
        )
        agrees, reason = plotting.verdict(name, results[name])
        mark = {True: "agrees", False: "DISAGREES", None: "n/a"}[agrees]
        tqdm.write(f"{name:>13}: {results[name]['seconds']:7.1f} s  [{mark}] {reason}")
    if args.experiment == "tour":
        report = plotting.write_report(results, args.out)
        print(f"report: {report}")
    print(f"wrote {args.out}/ in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
