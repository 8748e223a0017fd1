"""``torchrun --nproc_per_node=2 -m mlflow_unlearn.distributed``: DDP on two CPU processes (gloo) on digits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from measure import accuracy

from mlflow_unlearn.data import load_data, resolve_forget
from mlflow_unlearn.methods import get_method, run_method
from mlflow_unlearn.models import create_model
from mlflow_unlearn.training import TrainConfig, train

FORGET = "classes:3"
# Tiny budgets so that each two-process run takes seconds.
#: case -> (method, config): NITC (distillation stages; with a small step size also its passes until forgotten, whose
#: every decision all ranks must take alike) and retrain (the training loop that finetune shares).
CASES = {"nitc": ("nitc", {}), "nitc-slow": ("nitc", {"lr": 1e-4}), "retrain": ("retrain", {"epochs": 4})}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = load_data("digits", seed=0)
    split = resolve_forget(data, FORGET)
    torch.manual_seed(0)
    model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    model, _ = train(model, data.train, TrainConfig(epochs=3, seed=0), device="cpu")
    path = tmp_path_factory.mktemp("ddp") / "original.pt"
    torch.save(model.state_dict(), path)
    return split, model.eval(), path


def _torchrun(method: str, config: dict, model_in, out, nproc: int = 2) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "mlflow_unlearn.distributed",
           "--method", method, "--data", "digits", "--forget", FORGET, "--model-in", str(model_in),
           "--model-arch", "smallcnn", "--out", str(out), "--config", json.dumps(config), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_UNLEARN_QUIET": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1, proc.stdout  # only rank 0 reports
    return json.loads(summary[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_ddp_matches_one_process(setup, tmp_path, case):
    split, original, model_in = setup
    method, config = CASES[case]
    assert get_method(method).distributed
    out = tmp_path / f"{case}.pt"
    summary = _torchrun(method, config, model_in, out)
    assert summary["world_size"] == 2 and summary["method"] == method

    ddp_model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    ddp_model.load_state_dict(torch.load(out, weights_only=True))
    single = run_method(method, original, forget=split.forget, retain=split.retain, config=config,
                        device="cpu", forget_kind=split.kind, forget_classes=split.forget_classes).model

    retain_ddp, retain_single = accuracy(ddp_model, split.retain), accuracy(single, split.retain)
    forget_ddp, forget_single = accuracy(ddp_model, split.forget), accuracy(single, split.forget)
    assert retain_ddp > 0.9 and abs(retain_ddp - retain_single) < 0.05
    if method == "finetune":
        return  # fine-tuning alone does not forget a class in one epoch; only quality parity is asserted
    assert accuracy(original, split.forget) > 0.9
    assert forget_ddp < 0.1 and abs(forget_ddp - forget_single) < 0.1


def test_non_distributed_method_is_refused(setup, tmp_path):
    from mlflow_unlearn.distributed import main

    _, _, model_in = setup
    with pytest.raises(SystemExit, match="does not support DistributedDataParallel"):
        main(["--method", "unsir", "--data", "digits", "--forget", FORGET, "--model-in", str(model_in),
              "--model-arch", "smallcnn", "--out", str(tmp_path / "x.pt")])


def _torchrun_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "mlflow_unlearn", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1", "MLFLOW_UNLEARN_QUIET": "1"})


def test_the_cli_under_torchrun_refuses_a_method_without_ddp_before_loading_anything(sqlite_store):
    """``torchrun -m mlflow_unlearn unlearn ... --method unsir``: refused by the argument checks, so the model URI
    is never resolved (none is registered here) and nothing is logged. The registered two-process run is
    ``test_tracking_project.py``'s ``-e unlearn_distributed``, which runs this same command."""
    from mlflow import MlflowClient

    uri = sqlite_store("torchrun-refusal").uri
    refused = _torchrun_cli(["unlearn", "models:/ddp-cnn/1", "--forget", FORGET, "--method", "unsir",
                             "--device", "cpu"], {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri})
    assert refused.returncode != 0 and "does not run under torchrun" in refused.stdout + refused.stderr
    assert "Error: Method 'unsir' does not run under torchrun" in refused.stdout + refused.stderr  # our one line
    client = MlflowClient(uri, uri)
    assert client.search_registered_models() == []
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
