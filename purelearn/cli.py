"""The ``purelearn`` command: run the chapter's experiments, write numbers and figures.

    purelearn {paths,optimizers,activations,init,batchnorm,weight-decay,dropout,search,tour}
              [--out DIR] [--seed N] [--seeds N] [--data auto|embedded|DIR] [--quick]
              [--no-compile-cache]

Each experiment writes ``DIR/<name>.json`` and ``DIR/<name>.png``; ``tour``
runs all of them and writes ``DIR/report.html``. ``--seeds N`` trains seeds
``--seed`` .. ``--seed + N - 1`` of every setting as vmapped programs
(default :data:`DEFAULT_SEEDS`; ``--quick`` defaults to :data:`QUICK_SEEDS`;
either shortened to end at ``2**32 - 1``); ``--seeds 1`` is the single run of
seed ``--seed``.

Every mistake on the command line (an unknown experiment, with the closest
names suggested, a seed outside ``[0, 2**32 - 1]``, a ``--seeds`` below 1 or
running past ``2**32 - 1``, an ``--out`` that is a file or cannot be written, a
``--data`` directory without valid MNIST IDX files) is reported on one line
of standard error, ``purelearn: error: ...``, with exit status 2, before any
experiment runs. Compiled programs are kept in JAX's persistent compilation
cache (``$PURELEARN_COMPILE_CACHE``, else ``~/.cache/purelearn/jax``), so a
second run skips most compiling; ``--no-compile-cache`` turns it off.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tqdm.auto import tqdm

from purelearn.experiments import EXPERIMENTS, MAX_SEED

__all__ = ["main", "run_experiment", "MAX_SEED", "DEFAULT_SEEDS", "QUICK_SEEDS"]

#: Seeds per setting by default (``purelearn tour`` stays under 4 minutes on two
#: CPU cores with a warm compilation cache).
DEFAULT_SEEDS = 2

#: Seeds per setting with ``--quick``.
QUICK_SEEDS = 2

#: ``--data`` values that are not directories.
_DATA_KEYWORDS = ("auto", "embedded")


def run_experiment(
    name: str, out: Path, *, seed: int, data: str, quick: bool, seeds: int = 1
) -> dict[str, Any]:
    """Run one experiment over ``seeds`` seeds; write its JSON and PNG under ``out``;
    return its numbers."""
    from purelearn import plotting

    if name not in EXPERIMENTS:
        raise ValueError(f"name must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    record = EXPERIMENTS[name]
    result: dict[str, Any] = record(seed=seed, seeds=seeds, data=data, quick=quick)
    result["quick"] = quick
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plotting.save(record.figure(result), out / f"{name}.png")
    return result


class _Parser(argparse.ArgumentParser):
    """argparse, but every error is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see {self.prog} --help)")


def _fail(message: str) -> NoReturn:
    # One line, whatever the message holds (an OS error may carry a newline).
    print(f"purelearn: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32 - 1] = [0, {MAX_SEED}], got {seed}")
    return seed


def _seeds(text: str) -> int:
    try:
        seeds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if seeds < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {seeds}")
    return seeds


def _experiment(text: str) -> str:
    """An experiment's name, or an error that suggests the closest names."""
    names = [*EXPERIMENTS, "tour"]
    if text in names:
        return text
    near = difflib.get_close_matches(text.strip().lower().replace("_", "-"), names, n=3)
    hint = (
        f"did you mean {' or '.join(map(repr, near))}?"
        if near
        else f"choose from {', '.join(names)}"
    )
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} ({hint})")


def _default_help(default: object, quick: object) -> str:
    """``default: X`` for an option, with ``--quick``'s default only where it differs."""
    return f"default: {default}" + ("" if quick == default else f", with --quick {quick}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="purelearn",
        description="Reproduce the experiments of the textbook's chapter on training techniques.",
    )
    parser.add_argument(
        "experiment",
        choices=[*EXPERIMENTS, "tour"],
        type=_experiment,  # checked before choices: a near miss gets a suggestion
        help="one experiment, or 'tour' for all of them and an HTML report",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("purelearn-out"),
        help="output directory, created if missing (default: ./purelearn-out)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help=f"random seed, an integer in [0, {MAX_SEED}] (what jax.random.key tells "
        "apart; default: 0)",
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help=f"seeds per setting, --seed .. --seed + N - 1, trained as vmapped programs "
        f"({_default_help(DEFAULT_SEEDS, QUICK_SEEDS)}; 1 is the single run of --seed)",
    )
    parser.add_argument(
        "--data",
        default="auto",
        help="'auto' (full MNIST if cached, else the embedded sample), "
        "'embedded', or a directory of MNIST IDX files (checked before any experiment)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shrink every experiment to a smoke test"
    )
    parser.add_argument(
        "--no-compile-cache",
        dest="compile_cache",
        action="store_false",
        help="do not use JAX's persistent compilation cache "
        "($PURELEARN_COMPILE_CACHE, else ~/.cache/purelearn/jax)",
    )
    return parser


def _check_out(out: Path) -> None:
    """Create ``out`` and a probe file in it, so an unwritable place fails now."""
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} is an existing file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".purelearn-probe-"):
            pass
    except OSError as err:
        _fail(f"--out {str(out)!r} is not a writable directory: {err.strerror or err}")


def _check_data(data: str) -> None:
    """Load a ``--data`` directory once, so missing or corrupt IDX files fail now."""
    if data in _DATA_KEYWORDS:
        return
    if not Path(data).is_dir():
        _fail(f"--data {data!r} is neither 'auto', 'embedded' nor an existing directory")
    from purelearn.datasets import load_mnist

    try:
        load_mnist(data)
    except (ValueError, OSError) as err:
        _fail(f"--data {data!r}: {err}")


def _enable_compile_cache() -> None:
    from purelearn._cache import enable_compilation_cache

    try:
        enable_compilation_cache()
    except OSError as err:  # an unwritable $PURELEARN_COMPILE_CACHE: run without it
        print(f"purelearn: warning: no compilation cache: {err}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return 0 on success.

    A mistake on the command line prints one line to standard error and
    raises ``SystemExit(2)`` before any experiment runs.
    """
    args = _parser().parse_args(argv)
    if args.seeds is None:  # the default, shortened where it would run past the last seed
        args.seeds = min(QUICK_SEEDS if args.quick else DEFAULT_SEEDS, MAX_SEED - args.seed + 1)
    if args.seed + args.seeds - 1 > MAX_SEED:
        _fail(
            f"--seed {args.seed} with --seeds {args.seeds} runs past the largest seed "
            f"2**32 - 1 = {MAX_SEED} (larger seeds repeat smaller ones)"
        )
    _check_data(args.data)  # first: a failed command leaves no --out directory behind
    _check_out(args.out)
    if args.compile_cache:
        _enable_compile_cache()
    from purelearn import report

    names = list(EXPERIMENTS) if args.experiment == "tour" else [args.experiment]
    results = {}
    start = time.perf_counter()
    for name in tqdm(names, desc="purelearn", unit="experiment", disable=len(names) == 1):
        results[name] = run_experiment(
            name, args.out, seed=args.seed, seeds=args.seeds, data=args.data, quick=args.quick
        )
        v = report.safe_verdict(EXPERIMENTS[name], results[name])
        mark = {True: "agrees", False: "DISAGREES", None: "n/a"}[v.agrees]
        tqdm.write(
            f"{name:>13}: {results[name]['seconds']:7.1f} s  [{mark}, {v.agreeing} of "
            f"{v.seeds} seed{'s' if v.seeds != 1 else ''}] {v.reason}"
        )
    if args.experiment == "tour":
        page = report.write_report(results, args.out)
        print(f"report: {page}")
    print(f"wrote {args.out}/ in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
