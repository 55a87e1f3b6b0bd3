"""Benchmark: wall time of a no-change rerun of a cycle against the first run.

Goal: a rerun with unchanged data and spec costs at most 5% of the first run (every stage is a
Prefect cache hit). Both runs go through the same Prefect API in one process, warmed up first by
an empty flow, so the ratio compares the cycles themselves. The end-to-end time of a rerun as a
fresh `conveyor run` process (interpreter, imports and the temporary API included) is printed
beside it. The timed cycles skip the gate report (``CONVEYOR_REPORT=0``: it is per-run output,
not a cached stage); its render time for the rerun is measured on its own and printed beside.

    python bench/bench_rerun.py [--epochs 12] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs of the demo spec")
    ap.add_argument("--keep", help="use this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()

    os.environ["CONVEYOR_REPORT"] = "0"
    root = Path(args.keep or tempfile.mkdtemp(prefix="conveyor-bench-rerun-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    from conveyor.cli.common import prepare_env
    from conveyor.demo.bundled import bundled_example, write_demo_batch

    prepare_env(root / "workspace")
    import yaml

    spec = yaml.safe_load(bundled_example().read_text())
    if args.epochs:
        spec["train"]["epochs"] = args.epochs
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    write_demo_batch(root / "data" / "digits", 1)

    from prefect import flow

    from conveyor.orchestration.flows.cycle import continuous_training

    @flow
    def warm_up() -> None:
        return None

    t = time.perf_counter()
    warm_up()
    api_start = time.perf_counter() - t

    times = []
    for label in ("first run", "no-change rerun"):
        t = time.perf_counter()
        s = continuous_training(spec_path=str(spec_path), workspace=str(root / "workspace"), trigger="manual",
                                reason="bench_rerun")  # manual: exempt from the cool-down
        times.append(time.perf_counter() - t)
        print(f"{label:>16}: {times[-1]:7.2f} s  decision={s['decision']} model=v{s['model_version']}")

    from conveyor.reporting.report import render_report

    report_s = render_report(s["run_dir"]).seconds

    env = dict(os.environ)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "conveyor.cli.main", "run", str(spec_path), "--workspace", str(root / "workspace"),
                    "--json"], check=True, capture_output=True, env=env)
    cli_rerun = time.perf_counter() - t

    ratio = times[1] / times[0]
    print(f"temporary Prefect API start: {api_start:.2f} s (paid once per process)")
    print(f"rerun as a fresh `conveyor run` process: {cli_rerun:.2f} s ({cli_rerun / times[0]:.3f}x of the first run)")
    print(f"gate report of the rerun: {report_s:.2f} s (not in the ratio; with it {(times[1] + report_s) / (times[0] + report_s):.3f}x)")
    print(f"ratio rerun/first = {ratio:.3f}x (goal <= {GOAL:.2f}x): {'PASS' if ratio <= GOAL else 'MISS'}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
