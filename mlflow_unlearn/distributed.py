"""Run an unlearning method on several processes with DistributedDataParallel, under ``torchrun``.

This is how a model or a dataset that outgrows one device scales: every process holds the model and the
(small) forget set, the training loops shard their data with a ``DistributedSampler`` and all-reduce the
gradients of the trained model (only the student is wrapped in DDP; teachers stay plain, frozen
modules that every rank evaluates on the full data, so that every rank builds identical targets).
The process group uses NCCL on GPUs and gloo on CPUs (:func:`mlflow_unlearn.runtime.init_distributed_from_env`).

Example::

    torchrun --nproc_per_node=2 -m mlflow_unlearn.distributed --method nitc --data digits \\
        --forget classes:3 --model-in original.pt --model-arch smallcnn --out unlearned.pt

``--model-in`` is a ``state_dict`` saved with ``torch.save``; rank 0 writes the unlearned ``state_dict``
to ``--out`` and prints one JSON line (method, world size, wall time, forget count). The forget samples
themselves are never written anywhere. Without ``torchrun`` the same command runs on one process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from mlflow_unlearn import runtime as rt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlflow_unlearn.distributed",
                                     description="Run an unlearning method under torchrun (DDP).")
    parser.add_argument("--method", default="nitc", help="a registered method that supports DDP (default: nitc)")
    parser.add_argument("--data", required=True, help="data source, e.g. digits or mnist5k")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the train/test split (default: 0)")
    parser.add_argument("--forget", required=True, help="forget specification, e.g. classes:3 or random:0.1:0")
    parser.add_argument("--model-in", required=True, help="the trained model's state_dict (torch.save)")
    parser.add_argument("--model-arch", required=True, help="registered architecture, e.g. smallcnn")
    parser.add_argument("--out", required=True, help="where rank 0 writes the unlearned state_dict")
    parser.add_argument("--config", default="{}", help="method config overrides as a JSON object")
    parser.add_argument("--seed", type=int, default=0, help="seed of the method (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mlflow_unlearn.distributed``; returns the exit status."""
    from mlflow_unlearn.data import load_data, resolve_forget
    from mlflow_unlearn.data.nonmember import hold_out_nonmembers
    from mlflow_unlearn.methods import get_method, run_method
    from mlflow_unlearn.models import create_model

    args = build_parser().parse_args(argv)
    spec = get_method(args.method)
    if not spec.distributed:
        raise SystemExit(f"Method {args.method!r} does not support DistributedDataParallel; run it on one process.")
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--config must be a JSON object, e.g. '{{\"lr\": 0.001}}': {exc}") from exc
    distributed = rt.init_distributed_from_env()
    try:
        split = load_data(args.data, seed=args.data_seed)
        fsplit, nonmember = hold_out_nonmembers(resolve_forget(split, args.forget), seed=args.data_seed, split=split)
        model = create_model(args.model_arch, in_channels=split.train.in_channels, num_classes=split.num_classes,
                             input_size=split.train.input_size, input_shape=split.train.input_shape)
        model.load_state_dict(torch.load(args.model_in, map_location="cpu", weights_only=True))
        device = None if args.device == "auto" else args.device
        result = run_method(args.method, model, forget=fsplit.forget, retain=fsplit.retain, config=overrides,
                            device=device, forget_kind=fsplit.kind, forget_classes=fsplit.forget_classes,
                            seed=args.seed, nonmember=nonmember)
        if rt.rank() == 0:
            torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, args.out)
            print(json.dumps({"method": args.method, "world_size": rt.world_size(),
                              "wall_time_s": round(result.wall_time_s, 3), "forget_count": fsplit.count}))
        del result, model
        if distributed:
            torch.distributed.barrier()
    finally:
        if distributed:
            rt.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
