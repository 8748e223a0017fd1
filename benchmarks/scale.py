"""Scale check: peak memory and time of ``mlflow-unlearn unlearn`` on image folders of growing size.

For each size (1k, 4k, 16k images by default; 64k if asked), a folder of synthetic 224x224 RGB JPEGs (10 classes,
one sub-folder each; a class has its own colour, each image a smooth random pattern over it) is generated locally.
A small user model that takes the full 224-px input (a stride-8 convolution, pooling, a linear layer) is trained
for one epoch on 1,000 of the images and logged with ``log_model(model, data="imagefolder:<dir>")`` into a SQLite
store. Then two requests run through the CLI, each as its own process, from another folder:

* ``--forget classes:3`` (a tenth of the images), and
* ``--forget ids:<file.csv>`` (a seeded 1% of the training IDs),

both with the same method and settings at every size (``--method finetune`` with one epoch, the default
evaluation, gate and ONNX copy, ``--force`` so that every run also registers). Each command's peak resident set
size comes from ``/usr/bin/time -v`` ("Maximum resident set size": the largest single process, the DataLoader
workers included as processes of their own) and, sampled every 0.2 s from ``/proc``, the sum over the command's
process tree (which counts the workers' pages shared with the parent again: an upper bound). Wall time and CPU time
(user + system of the whole tree) are divided by the number of images in the folder.

Writes ``results_scale.csv`` and ``scale.png`` next to this file (or to ``--out``), and prints a markdown table.
The numbers and their reading are in ``SCALE.md``.

Example::

    nice -n 10 python benchmarks/scale.py --sizes 1000 4000 16000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
CLASSES = 10
SIDE = 224
TRAIN_IMAGES = 1000
FORGET_CLASS = 3
IDS_FRACTION = 0.01

TRAIN_SCRIPT = '''
import sys
import mlflow
import torch
from torch import nn

import mlflow_unlearn
from mlflow_unlearn.data import load_data
from mlflow_unlearn.training import TrainConfig, train


class PatchNet(nn.Module):
    """224-px RGB in: an 8x8 stride-8 convolution, 4x4 average pooling, a linear classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16 * 16, classes)

    def forward(self, x):
        return self.fc(self.pool(self.patches(x).relu()).flatten(1))


source, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
split = load_data(source)
torch.manual_seed(0)
subset = split.train.subset(torch.randperm(len(split.train))[:count].numpy())
model = train(PatchNet(), subset, TrainConfig(epochs=1, batch_size=64), device="cpu")[0].eval()
with mlflow.start_run():
    mlflow_unlearn.log_model(model, data=source, registered_model_name=name)
'''


def make_folder(root: Path, count: int, *, seed: int = 0) -> Path:
    """``count`` synthetic 224x224 JPEGs under ``root/<class>/``; kept if the folder already holds them."""
    from PIL import Image

    done = root / f".complete-{count}"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (CLASSES, 3))
    for c in range(CLASSES):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = i % CLASSES
        coarse = rng.normal(0, 30, (7, 7, 3)) + colours[label]
        image = Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        image.save(root / str(label) / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


class TreeSampler(threading.Thread):
    """Samples the summed resident set size (``VmRSS``) of a process and all its descendants every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.peak_kib = pid, period, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kib = max(self.peak_kib, sum(_rss_kib(p) for p in _tree(self.pid)))
            self._done.wait(self.period)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kib


def _tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def _rss_kib(pid: int) -> int:
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def timed(command: list[str], *, env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Run ``command`` under ``/usr/bin/time -v``: wall and CPU seconds, peak RSS of one process and of the tree."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *command], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    tree_kib = sampler.stop()
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": int(peak.group(1)) / 1024 if peak else float("nan"),
            "peak_tree_rss_mib": tree_kib / 1024}


def run_size(count: int, work: Path, env: dict[str, str], method_config: Path) -> list[dict]:
    folder = make_folder(work / f"images-{count}", count)
    source = f"imagefolder:{folder}"
    name = f"scale-{count}"
    subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, source, name, str(TRAIN_IMAGES)], env=env, cwd=work,
                   check=True, capture_output=True)
    from mlflow_unlearn.data import load_data

    train_ids = load_data(source).train.ids
    picked = np.random.default_rng(0).choice(len(train_ids), max(1, round(IDS_FRACTION * len(train_ids))),
                                             replace=False)
    request = work / f"request-{count}.csv"
    pd.DataFrame({"id": train_ids[np.sort(picked)]}).to_csv(request, index=False)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    rows = []
    for kind, spec in (("class", f"classes:{FORGET_CLASS}"), ("ids", f"ids:{request}")):
        command = ["mlflow-unlearn", "unlearn", f"models:/{name}/1", "--forget", spec, "--method", "finetune",
                   "--config", str(method_config), "--force", "--json"]
        result = timed(command, env=env, cwd=elsewhere)
        row = {"images": count, "request": kind, **result, "wall_ms_per_image": 1000 * result["wall_s"] / count,
               "cpu_ms_per_image": 1000 * result["cpu_s"] / count}
        print(row, flush=True)
        rows.append(row)
    return rows


def plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, part in frame.groupby("request"):
        axes[0].plot(part["images"], part["peak_rss_mib"], "o-", label=f"{kind}: largest process")
        axes[0].plot(part["images"], part["peak_tree_rss_mib"], "s--", label=f"{kind}: process tree (upper bound)")
        axes[1].plot(part["images"], part["wall_ms_per_image"], "o-", label=f"{kind}: wall")
        axes[1].plot(part["images"], part["cpu_ms_per_image"], "s--", label=f"{kind}: CPU")
    for ax, title, unit in ((axes[0], "Peak resident memory", "MiB"), (axes[1], "Time per image", "ms / image")):
        ax.set_xscale("log")
        ax.set_xlabel("images in the folder")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle("mlflow-unlearn unlearn on 224-px JPEG folders (finetune, 1 epoch)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="images per folder")
    parser.add_argument("--work", default=None, help="folder for the images and the store (default: a temporary one)")
    parser.add_argument("--out", default=str(HERE), help="where results_scale.csv and scale.png are written")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="mlflow-unlearn-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", MLFLOW_UNLEARN_DEVICE="cpu",
               MLFLOW_UNLEARN_DIGEST_KEY="scale-benchmark-" + "k" * 32)
    method_config = work / "finetune.yaml"
    method_config.write_text("epochs: 1\n")
    rows = []
    out = Path(args.out)
    for count in sorted(args.sizes):
        rows += run_size(count, work, env, method_config)
        frame = pd.DataFrame(rows)
        frame.to_csv(out / "results_scale.csv", index=False)  # after each size: a long run keeps what it measured
        plot(frame, out / "scale.png")
    print(frame.round(3).to_markdown(index=False) if _has_tabulate() else frame.round(3).to_string(index=False))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
