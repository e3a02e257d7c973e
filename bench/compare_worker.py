"""One run of one scenario for ``bench.compare``, in the interpreter of one side.

Run as a script by path (never imported by the parent): ``<side python>
bench/compare_worker.py --root SIDE --harness-root HARNESS --scenario X ...``.  It
puts the side's tree first on ``sys.path``, so ``mailflow`` is the side's own code, and
loads the ``bench`` package from ``HARNESS`` (the side's own tree, or the current one).
The relay each scenario starts is ``<this interpreter> -m mailflow serve`` in the
current directory, which the parent sets to the side's tree: the side's code again.

Prints one JSON object: the run's figure, peak RSS, details and the files that were
imported, so the parent can check which code ran.  Exit status 2 when the scenario
could not complete (the message on stderr).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def load_bench(harness_root: Path) -> None:
    """Import the ``bench`` package from ``harness_root``, whatever ``sys.path`` holds."""
    package = harness_root / "bench"
    spec = importlib.util.spec_from_file_location(
        "bench", package / "__init__.py", submodule_search_locations=[str(package)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"compare_worker: no bench package in {harness_root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/compare_worker.py")
    parser.add_argument("--root", type=Path, required=True, help="the side's tree")
    parser.add_argument("--harness-root", type=Path, required=True,
                        help="the tree whose bench package measures")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--scale", type=float, required=True)
    parser.add_argument("--sink-kind", required=True)
    parser.add_argument("--sink-binary", default=None)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--timeout-factor", type=float, default=1.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    # Script directory (this file's bench/) out, the side's tree in: mailflow is its own.
    sys.path[:] = [str(root), *(p for p in sys.path[1:] if Path(p or ".").resolve() != root)]
    load_bench(args.harness_root.resolve())
    import mailflow
    from bench.scenarios import BenchError, Options, run_scenario
    from bench.sinks import SinkError

    options = Options(runs=1, scale=args.scale, sink_kind=args.sink_kind,
                      sink_binary=args.sink_binary, data_root=args.data_root,
                      timeout_factor=args.timeout_factor, log=lambda line: None)
    try:
        result = run_scenario(args.scenario, options)
    except (BenchError, SinkError) as exc:
        print(f"scenario {args.scenario} FAILED: {exc}", file=sys.stderr)
        return 2
    (run,) = result.runs
    out: dict[str, Any] = {
        "value": run.value, "rss_mb": round(run.rss_mb, 1), "params": result.params,
        "details": run.details, "python": sys.executable, "cwd": str(Path.cwd()),
        "mailflow_file": str(Path(mailflow.__file__ or "").resolve()),
        "bench_file": str(Path(sys.modules["bench.scenarios"].__file__ or "").resolve()),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
