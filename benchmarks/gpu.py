"""GPU check: the CUDA path agrees with the CPU path, and how fast ``nitc`` is on ``resnet18`` at 32x32.

(a) Consistency: on ``digits`` with class 3 forgotten, an original ``smallcnn`` is trained on the CPU and
on the device under test, and ``finetune`` and ``nitc`` are run (fixed seeds) from the same CPU-trained
original on both paths. Forget / retain / test accuracies must agree within ``--tolerance`` points
(bf16 autocast and cuDNN are not bit-exact, so exact equality is not expected).

(b) Throughput: ``resnet18`` (CIFAR stem) on ``mnist5k`` upsampled to 32x32 and repeated to 3 channels,
class 3 forgotten. After a warm-up epoch, one plain fine-tune epoch over the retain set and one ``nitc``
run with its defaults are timed (synchronised) with their peak memory (CUDA: ``max_memory_allocated``).

(c) Every registered method runs once on the device under test (``digits``, class 3 forgotten, its
defaults, from one original trained there): forget / retain / test accuracy, wall time, and whether its
outputs are finite. This exercises each method's CUDA and bf16-autocast path.

The whole run takes under 5 minutes on one CUDA GPU. ``--device cpu`` runs the same script on the CPU
with tiny sizes (``--budget tiny``: 1 training epoch, 1 epoch per method stage, 32 images at 16x16), so
it is tested without a GPU; there part (a) compares the CPU path with itself (a determinism check).
``--append-results`` appends the results to ``benchmarks/RESULTS.md`` when the run was on CUDA.

Example::

    python benchmarks/gpu.py --device cuda --append-results
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import DataSplit, SampleSet, load_data, resolve_forget
from mlflow_unlearn.methods import list_methods, run_method
from mlflow_unlearn.metrics import accuracy, collect_outputs
from mlflow_unlearn.models import create_model
from mlflow_unlearn.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import GPU_SECTION, PeakMemory, machine_info, quick_overrides  # noqa: E402

FORGET_SPEC = "classes:3"
CONSISTENCY_METHODS = ("finetune", "nitc")
# Budget -> (training epochs of the originals, images in the throughput set (None = all), image side).
BUDGETS = {"full": (10, None, 32), "tiny": (1, 32, 16)}


def _method_config(name: str, budget: str) -> dict:
    return quick_overrides(name) if budget == "tiny" else {}


def _fresh(data: SampleSet, name: str, seed: int) -> torch.nn.Module:
    rt.seed_everything(seed)
    return create_model(name, in_channels=data.in_channels, num_classes=data.num_classes, input_size=data.input_size)


def consistency_check(device: torch.device, budget: str, tolerance: float) -> pd.DataFrame:
    """Metrics of the same recipe on the CPU and on ``device``; one row per (model, metric) with the difference.

    Rows: ``original (trained on each path)``, and ``finetune`` / ``nitc`` run on each path from the original
    trained on the CPU (so that only the method's execution path differs).
    """
    cpu = torch.device("cpu")
    split = load_data("digits", seed=0)
    fsplit = resolve_forget(split, FORGET_SPEC)
    recipe = TrainConfig(epochs=BUDGETS[budget][0], seed=0)
    trained = {}
    for path in (cpu, device):
        model, _ = train(_fresh(split.train, "smallcnn", 0), split.train, recipe, device=path, desc=f"{path} original")
        trained[path.type] = model.cpu()
    tables = {}
    for path in (cpu, device):
        models = {"original (trained on each path)": trained[path.type]}
        for name in CONSISTENCY_METHODS:
            models[name] = run_method(name, trained["cpu"], forget=fsplit.forget, retain=fsplit.retain,
                                      config=_method_config(name, budget), device=path, forget_kind=fsplit.kind,
                                      forget_classes=fsplit.forget_classes, seed=0).model
        tables[path.type] = {
            (model_name, f"{part}_accuracy"): 100 * accuracy(*collect_outputs(model, data, device=path))
            for model_name, model in models.items()
            for part, data in (("forget", fsplit.forget), ("retain", fsplit.retain), ("test", fsplit.test))
        }
    checked = f"checked path ({device})"
    rows = []
    for (model_name, metric), on_cpu in tables["cpu"].items():
        on_dev = tables[device.type][model_name, metric]
        rows.append({"model": model_name, "metric": metric, "cpu path": on_cpu, checked: on_dev,
                     "abs_diff": abs(on_dev - on_cpu), "ok": abs(on_dev - on_cpu) <= tolerance})
    return pd.DataFrame(rows)


def _upsampled(data: SampleSet, side: int, limit: int | None) -> SampleSet:
    if limit is not None and limit < len(data):  # a seeded random subset: the sources are ordered by class
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:limit].numpy())
    x = F.interpolate(data.to_tensors()[0], size=(side, side), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return SampleSet(x.contiguous(), data.y, data.ids, data.num_classes, dict(data.meta))


def _timed_method(name: str, original: torch.nn.Module, fsplit, config: dict, device: torch.device) -> dict:
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        run_method(name, original, forget=fsplit.forget, retain=fsplit.retain, config=config, device=device,
                   forget_kind=fsplit.kind, forget_classes=fsplit.forget_classes, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    return {"wall_time_s": wall, "peak_mem_mib": mem.peak_mib, "peak_mem_total_mib": mem.peak_total_mib}


def throughput_check(device: torch.device, budget: str) -> pd.DataFrame:
    """Wall time, samples/s and peak memory of one fine-tune epoch and of ``nitc`` on resnet18 at 32x32."""
    epochs, limit, side = BUDGETS[budget]
    base = load_data("mnist5k", seed=0)
    split = DataSplit(_upsampled(base.train, side, limit), _upsampled(base.test, side, limit), base.source, 0,
                      base.test_fraction)
    fsplit = resolve_forget(split, FORGET_SPEC)
    original, _ = train(_fresh(split.train, "resnet18", 0), split.train,
                        TrainConfig(epochs=max(1, epochs // 5), seed=0), device=device, desc="resnet18 original")
    finetune_epoch = {"epochs": 1}
    _timed_method("finetune", original, fsplit, finetune_epoch, device)  # warm-up: kernels, cuDNN autotuning
    nitc_label = "nitc (defaults)" if budget == "full" else "nitc (tiny budget)"
    rows = {"finetune, 1 epoch": _timed_method("finetune", original, fsplit, finetune_epoch, device),
            nitc_label: _timed_method("nitc", original, fsplit, _method_config("nitc", budget), device)}
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")
    n_retain, n_train = len(fsplit.retain), len(split.train)
    frame["retain_samples_per_s"] = n_retain / frame["wall_time_s"]
    frame["train_set_samples_per_s"] = n_train / frame["wall_time_s"]
    frame["time_vs_finetune_epoch"] = frame["wall_time_s"] / frame.loc["finetune, 1 epoch", "wall_time_s"]
    frame.attrs["sizes"] = f"{n_train} training images ({len(fsplit.forget)} forgotten), {side}x{side}x3"
    return frame.reset_index()


def methods_check(device: torch.device, budget: str) -> pd.DataFrame:
    """Every registered method once on ``device`` from one original trained there: accuracies and wall time."""
    split = load_data("digits", seed=0)
    fsplit = resolve_forget(split, FORGET_SPEC)
    original, _ = train(_fresh(split.train, "smallcnn", 0), split.train,
                        TrainConfig(epochs=BUDGETS[budget][0], seed=0), device=device, desc=f"{device} original")
    rows = []
    for name in list_methods():
        start = time.perf_counter()
        model = run_method(name, original, forget=fsplit.forget, retain=fsplit.retain,
                           config=_method_config(name, budget), device=device, forget_kind=fsplit.kind,
                           forget_classes=fsplit.forget_classes, seed=0).model
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row = {"method": name, "wall_time_s": time.perf_counter() - start}
        finite = True
        for part, data in (("forget", fsplit.forget), ("retain", fsplit.retain), ("test", fsplit.test)):
            logits, labels = collect_outputs(model, data, device=device)
            finite = finite and bool(torch.isfinite(logits).all())
            row[f"{part}_accuracy"] = 100 * accuracy(logits, labels)
        row["finite_outputs"] = finite
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """A pipe table of ``frame`` (floats with ``digits`` significant decimals), without extra dependencies."""
    def cell(value: object) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def markdown_section(consistency: pd.DataFrame, throughput: pd.DataFrame, methods: pd.DataFrame,
                     device: torch.device, budget: str, tolerance: float, command: str) -> str:
    """The GPU check as a markdown section (the one appended to RESULTS.md)."""
    machine = "; ".join(f"{k}={v}" for k, v in machine_info(device).items())
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "PASSED" if consistency["ok"].all() else "FAILED"
    lines = [
        f"{GPU_SECTION} ({date}, {device.type}, budget {budget})", "",
        f"Command: `{command}`", "", f"Machine: {machine}", "",
        f"### (a) {device.type} vs cpu on digits, {FORGET_SPEC} forgotten: {verdict} (tolerance {tolerance} points)",
        "", markdown_table(consistency), "",
        f"### (b) resnet18 throughput: {throughput.attrs.get('sizes', '')}", "",
        "Peak memory: extra above the start of the run (`peak_mem_mib`) and in total (`peak_mem_total_mib`); "
        "CUDA: `torch.cuda.max_memory_allocated`, CPU: sampled resident set size.", "",
        markdown_table(throughput), "",
        f"### (c) every registered method on {device.type} (digits, {FORGET_SPEC} forgotten, "
        f"{'defaults' if budget == 'full' else 'tiny budget'})", "",
        markdown_table(methods), "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda[:N] (the check) or cpu (tiny smoke run)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=None,
                        help="full (default on CUDA) or tiny (default on CPU)")
    parser.add_argument("--tolerance", type=float, default=3.0, help="allowed accuracy difference in points")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--markdown-out", default=None, help="also write the markdown section to this file")
    parser.add_argument("--append-results", action="store_true",
                        help="append the section to --results (only when the run was on CUDA)")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = rt.resolve_device(args.device)
    budget = args.budget or ("full" if device.type == "cuda" else "tiny")
    started = time.perf_counter()
    consistency = consistency_check(device, budget, args.tolerance)
    throughput = throughput_check(device, budget)
    methods = methods_check(device, budget)
    command = " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])])
    section = markdown_section(consistency, throughput, methods, device, budget, args.tolerance, command)
    print(section)
    print(f"Total wall time: {time.perf_counter() - started:.1f} s")
    if args.markdown_out:
        Path(args.markdown_out).write_text(section)
    if args.append_results:
        if device.type == "cuda":
            results = Path(args.results)
            previous = results.read_text() if results.exists() else ""
            results.write_text(previous.rstrip("\n") + "\n\n" + section)
            print(f"Appended the GPU check to {results}")
        else:
            print("Not appending to RESULTS.md: this run was on the CPU, not on a CUDA GPU.")
    return 0 if consistency["ok"].all() and methods["finite_outputs"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
