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

(d) Feeding: ``resnet18`` on the same 32x32 set, trained from the same initial weights by the project's loop
(``mlflow_unlearn.training.train``: its loader, pinned memory, non-blocking copies, channels_last, bf16 autocast)
and by a bare loop over tensors already on the device (channels_last, bf16 autocast on CUDA, the same optimiser,
schedule, batch size and epochs), each timed after a warm-up; then one inference pass of each (the project's
``collect_outputs``, at the device's inference batch size, beside a bare forward pass over the resident tensors).
Images/s of each path and their ratio; the results must agree: the two trained models' test accuracies within
``--tolerance`` points, and the project's inference pass predicts the bare pass's classes (at least 99% of test
images, the same accuracy within 0.5 points; bf16 against fp32 logits).

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
from mlflow_unlearn.training import SCHEDULES, TrainConfig, make_optimizer, train

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


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_training(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainConfig,
                   device: torch.device) -> torch.nn.Module:
    """``recipe``'s epochs of SGD on ``x``/``y`` (already on ``device``) with no loader: index, forward, step."""
    model = model.to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    steps = recipe.epochs * -(-len(x) // recipe.batch_size)
    opt = make_optimizer(model.parameters(), name=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = SCHEDULES["onecycle"](opt, lr=recipe.lr, total_steps=steps)  # as `train` schedules it
    gen = torch.Generator(device=device).manual_seed(recipe.seed)
    for _ in range(recipe.epochs):
        for batch in torch.randperm(len(x), device=device, generator=gen).split(recipe.batch_size):
            with rt.autocast(device):
                loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model


@torch.no_grad()
def _bare_inference(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    model = model.to(device).eval()
    if device.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    outputs = []
    for part in x.split(batch_size):
        with rt.autocast(device):
            outputs.append(model(part).float())
    return torch.cat(outputs)


def feeding_check(device: torch.device, budget: str, tolerance: float) -> pd.DataFrame:
    """Images/s of the project's training and inference loops beside bare loops over device-resident tensors, on
    resnet18 from the same initial weights in the same run, and whether their results agree."""
    epochs, limit, side = BUDGETS[budget]
    base = load_data("mnist5k", seed=0)
    train_set, test_set = _upsampled(base.train, side, limit), _upsampled(base.test, side, limit)
    recipe = TrainConfig(epochs=max(1, epochs // 5), batch_size=512 if device.type == "cuda" else 32, seed=0)
    initial = _fresh(train_set, "resnet18", 0).state_dict()
    x, y = (t.to(device) for t in train_set.to_tensors())
    test_x, test_y = (t.to(device) for t in test_set.to_tensors())

    def fresh() -> torch.nn.Module:
        model = _fresh(train_set, "resnet18", 0)
        model.load_state_dict(initial)
        return model

    warm = TrainConfig(epochs=1, batch_size=recipe.batch_size, seed=0)
    train(fresh(), train_set, warm, device=device, desc="warm-up")  # kernels, cuDNN autotuning, worker start
    _bare_training(fresh(), x, y, warm, device)
    timings, models = {}, {}
    for path in ("project", "bare"):
        _synchronise(device)
        start = time.perf_counter()
        if path == "project":
            models[path] = train(fresh(), train_set, recipe, device=device, desc="project loop")[0]
        else:
            models[path] = _bare_training(fresh(), x, y, recipe, device)
        _synchronise(device)
        timings[path, "train"] = time.perf_counter() - start
    batch = rt.inference_batch_size(device)
    predictions = {}
    for path in ("project", "bare"):
        _synchronise(device)
        start = time.perf_counter()
        if path == "project":
            predictions[path] = collect_outputs(models["bare"], test_set, device=device).logits.argmax(1)
        else:
            predictions[path] = _bare_inference(models["bare"], test_x, device, batch).argmax(1).cpu()
        _synchronise(device)
        timings[path, "inference"] = time.perf_counter() - start
    accuracies = {path: 100 * accuracy(*collect_outputs(model, test_set, device=device))
                  for path, model in models.items()}
    same_class = 100 * float((predictions["project"] == predictions["bare"]).float().mean())
    bare_acc = {path: 100 * float((pred == test_y.cpu()).float().mean()) for path, pred in predictions.items()}
    rows = []
    for stage, images, agree in (
        ("train", recipe.epochs * len(train_set),
         abs(accuracies["project"] - accuracies["bare"]) <= tolerance),
        ("inference", len(test_set), same_class >= 99 and abs(bare_acc["project"] - bare_acc["bare"]) <= 0.5),
    ):
        project, bare = images / timings["project", stage], images / timings["bare", stage]
        detail = (f"test accuracy {accuracies['project']:.2f} vs {accuracies['bare']:.2f}" if stage == "train" else
                  f"same class on {same_class:.2f}% of test images")
        rows.append({"stage": stage, "batch_size": recipe.batch_size if stage == "train" else batch,
                     "project_images_per_s": project, "bare_images_per_s": bare, "project_vs_bare": project / bare,
                     "results": detail, "agree": agree})
    return pd.DataFrame(rows)


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
                     feeding: pd.DataFrame, device: torch.device, budget: str, tolerance: float, command: str) -> str:
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
        f"### (d) feeding: the project's loops beside bare loops over {device.type}-resident tensors (resnet18, same "
        f"initial weights, same run)", "",
        markdown_table(feeding), "",
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
    feeding = feeding_check(device, budget, args.tolerance)
    command = " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])])
    section = markdown_section(consistency, throughput, methods, feeding, device, budget, args.tolerance, command)
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
    return 0 if consistency["ok"].all() and methods["finite_outputs"].all() and feeding["agree"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
