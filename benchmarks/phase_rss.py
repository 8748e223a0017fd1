"""Per-phase resident memory of one ``mlflow-unlearn`` CLI call, in one process.

Runs the CLI in this process with a thread that samples ``VmRSS`` every 50 ms, and wraps the steps of
``unlearn()`` (``prepare``, ``run``, ``evaluate``, ``gate``, ``log_model``, ...) and the evaluation's inner passes
(``collect_outputs``, ``mia_efficacy``, ``loss_mia``, ``membership_columns``), so that each call prints its RSS at
entry, at exit and the peak so far (MiB). Used in ``SCALE.md`` to find which phase holds the memory that grows from
the 1k- to the 16k-image folder. The arguments are the CLI's own, for example::

    MLFLOW_TRACKING_URI=sqlite:///<work>/mlflow.db python benchmarks/phase_rss.py unlearn models:/scale-16000/1 \\
        --forget classes:3 --method finetune --config <work>/finetune.yaml --force --seed 13

(a new ``--seed`` per call, since a request already registered is answered from the registry and measures nothing).
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import threading
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Trace:
    def __init__(self) -> None:
        self.peak = 0.0
        self.events: list[tuple[str, int, int, int]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.05)

    def wrap(self, module, name: str) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            before = _rss_mib()
            try:
                return fn(*args, **kwargs)
            finally:
                after = _rss_mib()
                self.peak = max(self.peak, before, after)
                self.events.append((f"{module.__name__.rsplit('.', 1)[-1]}.{name}", round(before), round(after),
                                    round(self.peak)))

        setattr(module, name, traced)

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str]) -> int:
    trace = _Trace()
    import mlflow_unlearn.metrics as metrics
    from mlflow_unlearn.tracking import api, steps
    from mlflow_unlearn.tracking.cli import cli

    metrics_evaluate = sys.modules["mlflow_unlearn.metrics.evaluate"]
    for name in ("log_plan", "run", "evaluate", "gate", "log_evaluation", "log_model", "register", "report"):
        trace.wrap(steps, name)
    trace.wrap(api, "prepare")
    for name in ("membership_columns",):
        trace.wrap(sys.modules["mlflow_unlearn.assess.assessment"], name)
    for name in ("collect_split_outputs", "evaluate_outputs", "collect_outputs"):
        trace.wrap(metrics, name)
    for name in ("mia_efficacy", "loss_mia", "collect_outputs"):
        trace.wrap(metrics_evaluate, name)
    try:
        cli.main(argv, standalone_mode=False)
    finally:
        trace.stop()
        print("phase, RSS at entry, at exit, peak so far (MiB):")
        for event in trace.events:
            print(json.dumps(event))
        print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
