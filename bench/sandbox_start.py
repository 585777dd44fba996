"""What the sandbox costs a job: worker start time with and without bubblewrap.

    python -m bench.sandbox_start [--repeat 7] [--model mlp|fixed_delta] [--json]

Starts the real worker (``agent.workers.handle.Worker.start``: spawn, import, build the model,
load the breast_cancer CSV) ``--repeat`` times each way, alternating, and prints the median
seconds of each and their difference. The sandbox is built once per job, like the worker,
so the difference is paid once per job, not per round. With ``--json`` the last line is a
JSON object with ``plain_start_seconds``, ``sandboxed_start_seconds`` and
``sandbox_overhead_seconds``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sklearn.datasets import load_breast_cancer

from agent.workers.handle import Sandboxing, Worker
from agent.workers.sandbox import Limits, probe
from confide.data.datasets import DataFormat, DatasetDescription
from confide.v1 import common_pb2

_FEATURES = tuple(f"f{i}" for i in range(30))


def _dataset(root: Path) -> DatasetDescription:
    data = load_breast_cancer()
    path = root / "bc.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*_FEATURES, "label"])
        for row, y in zip(data.data, data.target, strict=True):
            w.writerow([*(f"{v:.6g}" for v in row), int(y)])
    return DatasetDescription("bc", path, DataFormat.CSV, _FEATURES, "label")


def _job(model: str) -> common_pb2.JobSpec:
    job = common_pb2.JobSpec(name="bench-sandbox")
    if model == "fixed_delta":
        job.model.kind = common_pb2.MODEL_KIND_FIXED_DELTA
        job.model.fixed_delta_params = 1000
    else:
        job.model.kind = common_pb2.MODEL_KIND_MLP
    job.dataset.name = "bc"
    job.dataset.features.extend(_FEATURES)
    job.dataset.label = "label"
    job.dataset.num_classes = 2
    job.training.local_epochs = 1
    job.training.batch_size = 32
    job.training.learning_rate = 0.1
    return job


def _start_once(
    job: common_pb2.JobSpec, dataset: DatasetDescription, sandbox: Sandboxing | None
) -> float:
    t0 = time.perf_counter()
    worker = Worker.start(
        job=job, job_id="bench", dataset=dataset, device="cpu", timeout=120, sandbox=sandbox
    )
    elapsed = time.perf_counter() - t0
    worker.stop()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Print the worker's start time with and without the sandbox."""
    ap = argparse.ArgumentParser(prog="python -m bench.sandbox_start")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--model", choices=["mlp", "fixed_delta"], default="mlp")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    isolation = probe()
    if not isolation.sandboxed or isolation.bwrap is None:
        print(f"no sandbox on this host: {isolation.detail}", file=sys.stderr)
        return 1
    sandbox = Sandboxing(bwrap=isolation.bwrap, limits=Limits(threads=1))
    job = _job(args.model)
    plain: list[float] = []
    boxed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="confide-bench-") as tmp:
        dataset = _dataset(Path(tmp))
        _start_once(job, dataset, None)  # warm the page cache for both
        for _ in range(args.repeat):
            plain.append(_start_once(job, dataset, None))
            boxed.append(_start_once(job, dataset, sandbox))
    figures = {
        "model": args.model,
        "repeat": args.repeat,
        "plain_start_seconds": round(statistics.median(plain), 4),
        "sandboxed_start_seconds": round(statistics.median(boxed), 4),
        "sandbox_overhead_seconds": round(statistics.median(boxed) - statistics.median(plain), 4),
    }
    print(f"worker start ({args.model}, median of {args.repeat})")
    print(f"  plain:      {figures['plain_start_seconds']:.3f} s")
    print(f"  sandboxed:  {figures['sandboxed_start_seconds']:.3f} s")
    print(f"  overhead:   {figures['sandbox_overhead_seconds']:+.3f} s per job (goal <= 0.3 s)")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
