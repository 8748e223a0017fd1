"""One plan for every door: :func:`prepare` checks an unlearning request once and returns a frozen plan.

The API (:func:`~mlflow_unlearn.tracking.api.unlearn`, :func:`~mlflow_unlearn.tracking.api.evaluate_version`),
the ``mlflow-unlearn`` CLI, the MLflow Project and the registry plugin's launcher all call :func:`prepare`,
so the same bad input gets the same error from each of them, before anything expensive or anything logged:

1. the arguments alone: the method (and, under ``torchrun``, whether it runs distributed), the reference,
   the forget spec's grammar, the retain evaluation size, the method and gate configs;
2. the registry: the model version, its format (a trainable PyTorch model);
3. the data: the version's lineage (or the given source), its earlier forget steps replayed, the forget
   set resolved against it, and the model's fit to the data (input shape, class count).

Nothing downstream re-parses or re-checks: it reads the :class:`UnlearnPlan`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.assess.gate import GateConfig
from mlflow_unlearn.data import forget_by_digests, id_digests, load_data, resolve_forget
from mlflow_unlearn.data.nonmember import hold_out_nonmembers
from mlflow_unlearn.methods import get_method, list_methods
from mlflow_unlearn.methods.registry import config_to_dict
from mlflow_unlearn.models import check_one_input, class_scores
from mlflow_unlearn.request import UnlearnRequest
from mlflow_unlearn.tracking import lineage as lin
from mlflow_unlearn.tracking import vocabulary as vocab
from mlflow_unlearn.tracking.configs import gate_config, load_config, method_config, retrain_config
from mlflow_unlearn.tracking.formats import code_importable, load_trainable_module, read_code
from mlflow_unlearn.tracking.keys import HOW_TO_SET, DigestKey, DigestKeyError, read_digest_key, require_key
from mlflow_unlearn.tracking.provenance import artifact_digest, check

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from mlflow_unlearn.data import DataSplit, ForgetSpec, ForgetSplit

_logger = logging.getLogger("mlflow_unlearn")

#: Default cap on the retain samples that are evaluated (seeded subset): the retain set is most of the
#: data, and its accuracy is estimated to about +-1 pp from 1000 samples; the membership attack already
#: subsamples it to the test-set size.
RETAIN_EVAL_SIZE = 1000


class DataResolutionError(ValueError):
    """The data source cannot be loaded or does not fit the model."""


@dataclass(frozen=True)
class UnlearnPlan:
    """Everything one unlearning (or evaluation) needs, checked: the output of :func:`prepare`.

    Args:
        model_uri: the URI as given.
        client: the MLflow client that resolved the version (and that logs the run).
        parent: the registered version to unlearn (or evaluate).
        parent_run: the run that logged ``parent`` (None for a version without one).
        model: ``parent`` loaded as a trainable module.
        lineage: the data lineage of ``parent``: source, split seed, test fraction, earlier forget steps.
        split: the train/test split ``parent`` was trained on (earlier forget steps applied).
        forget: the forget set resolved against ``split``: forget, retain and test subsets, forgetting kind,
            spec as recorded, digest and count.
        forget_spec: the forget spec as recorded (parsed once): as given (an ``ids:`` path made absolute), or for an
            ``ids:`` request its keyed record ``ids:keyed-<hex>``, which names no file.
        method: the registered unlearning method.
        config: the method's validated config dataclass.
        config_hash: the hash of method, config and seed (the idempotency key).
        gate: the acceptance gate's thresholds.
        reference: :data:`~mlflow_unlearn.tracking.vocabulary.REFERENCES`, ``none`` or ``retrain``.
        retrain_config: the retrain reference's config (the parent's recipe), None without a reference.
        recipe: the parent's ``model.*`` and ``train.*`` params, inherited by the result.
        seed: seed of the method, the reference and the attacks.
        device: where to run.
        retain_eval_size: how many retain samples are evaluated at most (None: all of them).
        code: the files of the model's logged ``code_paths`` (relative path -> content), saved again with the
            unlearned model so that it loads where the parent does.
        digest_key: the deployment's digest key (None when none is configured; an ``ids:`` plan always has one).
        nonmember: samples the model never trained on that the method may use and no metric sees: the source's
            validation part, else a seeded per-class carve-out of the test side, which ``forget.test`` then no
            longer holds (:func:`mlflow_unlearn.data.nonmember.hold_out_nonmembers`); None unless the method is
            registered with ``uses_nonmember`` for this kind of forgetting.
    """

    model_uri: str
    client: MlflowClient = field(repr=False)
    parent: ModelVersion = field(repr=False)
    parent_run: Run | None = field(repr=False)
    model: nn.Module = field(repr=False)
    lineage: lin.DataLineage
    split: DataSplit = field(repr=False)
    forget: ForgetSplit
    forget_spec: ForgetSpec
    method: str
    config: Any
    config_hash: str
    gate: GateConfig
    reference: str
    retrain_config: Any
    recipe: Mapping[str, str] = field(repr=False)
    seed: int
    device: torch.device
    retain_eval_size: int | None
    code: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    digest_key: DigestKey | None = field(default=None, repr=False)
    nonmember: Any = field(default=None, repr=False)

    @property
    def config_dict(self) -> dict[str, Any]:
        """The method config as a plain dict (what is logged and hashed)."""
        return config_to_dict(self.config)

    @property
    def key_fingerprint(self) -> str:
        """The fingerprint of the key of this plan's digests ('' when they are not keyed)."""
        return self.digest_key.fingerprint if self.digest_key is not None and self.keyed else ""

    @property
    def by_ids(self) -> bool:
        """Whether the forget set is an ``ids:`` set (tombstones, the spec recorded as a keyed digest, no path)."""
        return self.forget_spec.by_ids

    @property
    def keyed(self) -> bool:
        """Whether every digest this plan records is keyed: an ``ids:`` request, or any request on a lineage that
        holds an ``ids:`` step (its sets lack the IDs forgotten then; a plain digest would let anyone find them)."""
        return self.by_ids or self.lineage.keyed

    @property
    def new_lineage(self) -> lin.DataLineage:
        """The lineage of the unlearned model: this plan's forget step appended (digest and count, no IDs)."""
        return self.lineage_for_run("")

    def lineage_for_run(self, run_id: str) -> lin.DataLineage:
        """:attr:`new_lineage` with the run that stores this step's tombstones (an ``ids:`` step)."""
        fs = self.forget
        return self.lineage.then(lin.ForgetStep(self.forget_spec, fs.digest, fs.count, self.key_fingerprint,
                                                run_id if self.by_ids else ""))

    @property
    def retain_eval_count(self) -> int:
        """How many retain samples are evaluated."""
        return min(len(self.forget.retain), self.retain_eval_size or len(self.forget.retain))

    def params(self, **flags: Any) -> dict[str, Any]:
        """The run params of this plan (and of ``flags`` as ``unlearn.<flag>``): no sample, no ID."""
        fs, lineage = self.forget, self.lineage
        return {
            "unlearn.parent": vocab.version_ref(self.parent), "unlearn.parent_run_id": self.parent.run_id or "",
            "unlearn.method": self.method, "unlearn.reference": self.reference, "unlearn.seed": self.seed,
            "unlearn.device": str(self.device), **{f"unlearn.{k}": v for k, v in flags.items()},
            "data.source": lineage.source, "data.seed": lineage.seed, "data.test_fraction": lineage.test_fraction,
            "data.split": "explicit" if self.split.explicit else "seeded",
            "data.forget_steps_before": len(lineage.chain), "data.retain_eval_count": self.retain_eval_count,
            "forget.spec": fs.spec, "forget.kind": fs.kind, "forget.count": fs.count, "forget.digest": fs.digest,
            "forget.key": self.key_fingerprint or vocab.NO_KEY,
            "forget.classes": ",".join(map(str, fs.forget_classes)),
            **self.recipe,
            **{f"config.{k}": v for k, v in self.config_dict.items()},
            **{f"gate.{k}": v for k, v in self.gate.to_dict().items()},
        }

    @property
    def test_forget_share(self) -> float:
        """The share of the test set in the forgotten classes (0 for sample-wise forgetting)."""
        return float(np.isin(self.forget.test.y.numpy(), self.forget.forget_classes).mean())


def prepare(
    model_uri: str,
    request: UnlearnRequest,
    *,
    gate: GateConfig | Mapping[str, Any] | None = None,
    retain_eval_size: int | None = RETAIN_EVAL_SIZE,
    distributed: bool | None = None,
    forgotten: bool = False,
    client: MlflowClient | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    digest_key: DigestKey | None = None,
) -> UnlearnPlan:
    """Check an unlearning request once, cheapest checks first, and return the frozen :class:`UnlearnPlan`.

    Args:
        model_uri: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
        request: the :class:`~mlflow_unlearn.request.UnlearnRequest` (its grammar already checked): the forget spec
            (an ``ids:`` path absolute, as the lineage records it), the method (see
            :func:`mlflow_unlearn.methods.list_methods`), the data source (None: the version's own), the method's
            config (a YAML path may hold a ``gate:`` section of thresholds), the reference, the seed, the device.
        gate: gate thresholds: a mapping overrides the config YAML's ``gate:`` keys one by one, a
            :class:`~mlflow_unlearn.assess.gate.GateConfig` replaces them.
        retain_eval_size: evaluate retain metrics on a seeded subset of at most this many retain samples
            (None: all of them).
        distributed: whether the method will run under ``torchrun`` (None: whether a process group is
            initialised in this process); a method without DistributedDataParallel support is refused.
        forgotten: the forget set may be one the version's lineage already forgot (to evaluate a version):
            the data is then rebuilt as it was before that step.
        client, tracking_uri, registry_uri: the MLflow client to use, else one for these URIs (default: current).
        digest_key: the key of ``ids:`` digests (default: :func:`~mlflow_unlearn.tracking.keys.read_digest_key`,
            the deployment's ``MLFLOW_UNLEARN_DIGEST_KEY``). An ``ids:`` request is recorded as keyed digests only
            (set, per-ID tombstones, spec) and is refused without a key.

    Returns:
        The :class:`UnlearnPlan`.

    Raises:
        ModelResolutionError: unknown model, version or alias, malformed URI.
        ModelFormatError: not a PyTorch model, or a ``pt2`` model.
        LineageError: the training data cannot be found or rebuilt.
        DataResolutionError: the data cannot be loaded or does not fit the model (class count, input shape).
        ConfigError: a missing, malformed or invalid method config.
        DigestKeyError: an ``ids:`` request without a digest key (the message says how to set one).
        ValueError: unknown method, invalid thresholds or retain evaluation size, a forget set the data does not
            have (unknown classes or IDs, an empty set), or a method that does not run under ``torchrun``.
    """
    if not isinstance(request, UnlearnRequest):
        raise TypeError(f"Expected argument `request` to be an UnlearnRequest but got {type(request).__name__}")
    method, reference, seed, spec = request.method, request.reference, request.seed, request.forget
    key, dev = _check_arguments(request, retain_eval_size, digest_key, distributed=distributed)
    method_values, gate_from_file = load_config(request.config)
    cfg = method_config(method, method_values)
    gate_cfg = gate_config(gate, gate_from_file)
    client = client or tracking_client(tracking_uri, registry_uri)
    parent = vocab.resolve_model_version(client, model_uri)
    model, code, files = load_version(client, parent, model_uri)
    parent_run = client.get_run(parent.run_id) if parent.run_id else None
    check_parent_provenance(client, parent, parent_run, key, files)
    lineage, split, forget_split, recorded = resolve_data(model, request.source, parent_run, spec, forgotten=forgotten,
                                                          key=key, client=client, code=code)
    nonmember = None  # set aside only for a method that uses them: the metrics then see fewer test samples
    if get_method(method).reads_nonmember(forget_split.kind):
        forget_split, nonmember = hold_out_nonmembers(forget_split, seed=split.seed, split=split)
    recipe = lin.inherited_params(parent_run) if parent_run is not None else {}
    chash = lin.config_hash(method, config_to_dict(cfg), seed, reference=reference, gate=gate_cfg.to_dict(),
                            retain_eval_size=retain_eval_size, source=lineage.source)
    return UnlearnPlan(
        model_uri=model_uri, client=client, parent=parent, parent_run=parent_run, model=model, lineage=lineage,
        split=split, forget=forget_split, forget_spec=recorded, method=method, config=cfg, config_hash=chash,
        gate=gate_cfg, reference=reference,
        retrain_config=retrain_config(recipe) if reference == vocab.RETRAIN_REFERENCE else None, recipe=recipe,
        seed=seed, device=dev, retain_eval_size=retain_eval_size, code=code, digest_key=key, nonmember=nonmember,
    )


def _check_arguments(request: UnlearnRequest, retain_eval_size: Any, digest_key: DigestKey | None, *,
                     distributed: bool | None) -> tuple[DigestKey | None, torch.device]:
    """The checks that need the engine but no registry: the method is registered (and runs DistributedDataParallel
    under ``torchrun``), the retain evaluation size, the digest key of an ``ids:`` request, the device."""
    method = request.method
    distributed = rt.is_distributed() if distributed is None else distributed
    if distributed and not get_method(method).distributed:
        supported = [m for m in list_methods(include_reference=False) if get_method(m).distributed]
        raise ValueError(f"Method {method!r} does not run under torchrun (DistributedDataParallel); methods that "
                         f"do: {', '.join(supported)}")
    get_method(method)
    if retain_eval_size is not None and (isinstance(retain_eval_size, bool) or not isinstance(retain_eval_size, int)
                                         or retain_eval_size < 1):
        raise ValueError(f"Expected argument `retain_eval_size` to be a positive int or None but got "
                         f"{retain_eval_size!r}")
    key = digest_key if digest_key is not None else read_digest_key()
    if request.forget.by_ids:
        require_key(key)
    return key, rt.resolve_device(request.device)


def resolve_data(model: nn.Module, data: str | None, parent_run: Run | None, spec: ForgetSpec, *,
                 forgotten: bool = False, key: DigestKey | None = None, client: MlflowClient | None = None,
                 code: Mapping[str, bytes] | None = None
                 ) -> tuple[lin.DataLineage, DataSplit, ForgetSplit, ForgetSpec]:
    """The lineage, the training split and the forget split of a version's data, checked against ``model``, and the
    spec as it is recorded (an ``ids:`` spec's keyed record).

    Args:
        model: the version's model.
        data: the data source; None for the one ``parent_run`` recorded.
        parent_run: the run that logged the version.
        spec: the parsed forget spec (an ``ids:`` path already absolute).
        forgotten: if the lineage already forgot ``spec``, rebuild the data as it was before that step.
        key: the digest key (required for an ``ids:`` spec or a lineage that holds an ``ids:`` step: every digest is
            then keyed); the ``ids:`` forget split records the keyed digest of its spec instead of the path.
        client: the client that downloads earlier ``ids:`` steps' tombstones.
        code: the model's logged code (a ``factory:`` source may name a module of it).

    Raises:
        LineageError, DataResolutionError, ValueError: see :func:`prepare`.
    """
    ids = spec.by_ids
    recorded = require_key(key).keyed_spec(spec) if ids else spec
    lineage = resolve_lineage(data, parent_run)
    if lineage.keyed and key is None:
        raise DigestKeyError("This model's lineage holds a forget request by sample IDs, so every later step is "
                             f"recorded as keyed digests, and none can be made without the digest key: {HOW_TO_SET}")
    if forgotten:
        lineage = lineage_before(lineage, recorded)
    split, earlier = _replay(lineage, key=key, client=client, code=code)
    try:
        forget_split = resolve_forget(split, spec, key=key.secret if ids or lineage.keyed else None, forgotten=earlier)
    except OSError as exc:  # e.g. a path longer than the OS allows; the path itself is not repeated
        raise ValueError(f"Cannot read the forget request file: {exc.strerror or type(exc).__name__}; give the "
                         "path of a readable .csv, .parquet or .txt file of sample IDs") from None
    if ids:
        forget_split = dataclasses.replace(forget_split, spec=recorded.text)
    check_model_fits(model, split, lineage.source)
    return lineage, split, forget_split, recorded


def tracking_client(tracking_uri: str | None, registry_uri: str | None) -> MlflowClient:
    """An :class:`MlflowClient` for the given URIs (default: the current tracking URI)."""
    return MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri(), registry_uri=registry_uri)


def load_version(client: MlflowClient, version: ModelVersion, model_uri: str
                 ) -> tuple[nn.Module, dict[str, bytes], str]:
    """Download ``version`` through ``client``'s registry; load it as a trainable module, with its logged code.

    Returns:
        The module, the files of its logged ``code_paths`` (see :func:`~.formats.read_code`), and the digest of
        the downloaded files (:func:`~.provenance.artifact_digest`).

    Raises:
        ModelFormatError: not a PyTorch model, one that cannot be trained (``pt2``), or one whose class
            cannot be imported (a module neither installed nor logged with ``code_paths``).
    """
    source = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri)
        return load_trainable_module(local, model_uri=model_uri), read_code(local), artifact_digest(local)


def check_parent_provenance(client: MlflowClient, parent: ModelVersion, parent_run: Run | None,
                            key: DigestKey | None, files_digest: str) -> None:
    """A parent whose lineage claims earlier forget steps must prove it (with a key configured): a later step's
    record signs the whole chain, so an unproven chain would be signed as if it had been forgotten.

    Raises:
        LineageError: the parent's provenance record is missing or does not verify (the reason, no ID).
    """
    if key is None or parent_run is None:
        return
    try:
        recorded = lin.lineage_from_run(parent_run)
    except lin.LineageError:
        return
    if not recorded.chain:
        return
    found = check(client, parent, key, chain_digest=recorded.chain_digest(), files_digest=files_digest)
    if not found.valid:
        raise lin.LineageError(f"{vocab.version_ref(parent)} claims earlier forget steps, but it cannot be verified "
                               f"as an unlearning result: {found.reason}. Unlearn from a verified version or from "
                               "the original")


def resolve_lineage(data: str | None, parent_run: Run | None) -> lin.DataLineage:
    """The lineage of the data: the one ``parent_run`` recorded, or ``data`` (keeping the recorded split).

    Raises:
        LineageError: no data given and none recorded.
    """
    recorded = None
    if parent_run is not None:
        try:
            recorded = lin.lineage_from_run(parent_run)
        except lin.LineageError:
            if not data:
                raise
    if not data:
        if recorded is None:
            raise lin.LineageError("The model version has no source run, so its training data is unknown. Pass the "
                                   "data explicitly (data='digits', 'npz:<path>', ...).")
        return recorded
    if recorded is not None and recorded.source == data:
        return recorded
    if recorded is not None:
        return lin.DataLineage(data, recorded.seed, recorded.test_fraction)
    return lin.DataLineage(data)


def lineage_before(lineage: lin.DataLineage, spec: ForgetSpec | str) -> lin.DataLineage:
    """``lineage`` cut before its forget step ``spec`` if it has one (to evaluate a version on a set it forgot).

    >>> chain = (lin.ForgetStep("classes:3", "d1", 5), lin.ForgetStep("classes:4", "d2", 6))
    >>> lineage_before(lin.DataLineage("digits", chain=chain), "classes:4").chain == chain[:1]
    True
    """
    text = spec if isinstance(spec, str) else spec.text
    earlier = [step.spec.text for step in lineage.chain]
    if text not in earlier:
        return lineage
    return dataclasses.replace(lineage, chain=lineage.chain[:earlier.index(text)])


def load_split(lineage: lin.DataLineage, *, key: DigestKey | None = None, client: MlflowClient | None = None,
               code: Mapping[str, bytes] | None = None) -> DataSplit:
    """Load the lineage's source and replay its forget chain; return the split the model was trained on.

    An ``ids:`` step is replayed from the tombstones its run stored (keyed per-ID digests), not from its file. The
    model's logged ``code`` is importable while the source loads (a ``factory:`` source may name a module of it).

    Raises:
        DataResolutionError: the source cannot be loaded.
        LineageError: an earlier forget step fails or selects other samples than it did (digest mismatch).
    """
    return _replay(lineage, key=key, client=client, code=code)[0]


def _replay(lineage: lin.DataLineage, *, key: DigestKey | None, client: MlflowClient | None,
            code: Mapping[str, bytes] | None = None) -> tuple[DataSplit, np.ndarray]:
    """:func:`load_split`, and the IDs its forget steps removed (kept in memory only, for messages)."""
    try:
        with code_importable(code or {}):
            split = load_data(lineage.source, seed=lineage.seed, test_fraction=lineage.test_fraction)
    except (ValueError, OSError) as exc:
        raise DataResolutionError(f"Cannot load the data source {lineage.source!r}: {exc}") from None
    removed = []
    for step in lineage.chain:
        try:
            done = (replay_tombstones(split, step, key, client) if step.by_ids
                    else resolve_forget(split, step.spec, key=_step_key(step, key)))
        except (ValueError, OSError) as exc:
            raise lin.LineageError(f"Cannot replay the earlier forget step {step.spec.text!r} of this model's lineage: "
                                   f"{exc}") from None
        if done.digest != step.digest:
            raise lin.LineageError(
                f"The earlier forget step {step.spec.text!r} no longer selects the samples it selected then (digest "
                "mismatch), so the data this model was trained on cannot be rebuilt. Restore that forget "
                "request file or unlearn from an earlier version."
            )
        split = dataclasses.replace(split, train=done.retain)
        removed.append(done.forget.ids)
    return split, (np.concatenate(removed) if removed else np.array([], dtype=str))


def _step_key(step: lin.ForgetStep, key: DigestKey | None) -> bytes | None:
    """The secret of a keyed step's digest (None for an unkeyed step).

    Raises:
        ValueError: no key, or another key than the step's.
    """
    if not step.key_fingerprint:
        return None
    key = require_key(key)
    if key.fingerprint != step.key_fingerprint:
        raise ValueError(f"it was recorded with the digest key of fingerprint {step.key_fingerprint}, but the "
                         f"configured key has fingerprint {key.fingerprint}; configure the key that made it")
    return key.secret


def replay_tombstones(split: DataSplit, step: lin.ForgetStep, key: DigestKey | None,
                      client: MlflowClient | None) -> ForgetSplit:
    """The forget split of an earlier ``ids:`` step, from the tombstones its run stored.

    Raises:
        ValueError: no key, another key than the step's, or tombstones that are missing or match other samples.
    """
    secret = _step_key(step, key)
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(run_id=step.run_id, artifact_path=vocab.TOMBSTONES_ARTIFACT, dst_path=tmp,
                                   tracking_uri=client.tracking_uri if client is not None else None)
        with open(local) as f:
            digests = json.load(f)["id_digests"]
    return forget_by_digests(split, digests, key=secret, spec=step.spec)


def tombstones(plan: UnlearnPlan) -> dict[str, Any]:
    """The tombstones of an ``ids:`` plan (what :data:`~mlflow_unlearn.tracking.vocabulary.TOMBSTONES_ARTIFACT`
    holds): the key fingerprint and the sorted keyed digest of each forgotten ID, never an ID."""
    key = require_key(plan.digest_key)
    return {"key_fingerprint": key.fingerprint, "forget_digest": plan.forget.digest,
            "id_digests": sorted(id_digests(plan.forget.forget.ids, key=key.secret).tolist())}


def check_model_fits(model: nn.Module, split: DataSplit, source: str) -> None:
    """Fail early when the model cannot take the data's inputs, holds no class scores in its output, or has another
    number of classes.

    Inputs reach the model as they are (float32, or int64 token IDs); the output is read by
    :func:`mlflow_unlearn.models.class_scores` (a tensor, a tuple's first element, a dict's or object's ``logits``).

    Raises:
        DataResolutionError: with the shapes or class counts that disagree.
        ModelInputError: a multi-input model (``forward`` needs more than one argument).
        ModelOutputError: an output without class scores (a string, a dict without ``logits``...).
    """
    check_one_input(model)
    sample = split.train.first_inputs(2)
    try:
        with torch.no_grad():
            was_training = model.training
            out = model.eval()(sample)
            model.train(was_training)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        dtype = str(sample.dtype).removeprefix("torch.")
        raise DataResolutionError(f"The model cannot take the inputs of {source!r} ({dtype}, shape "
                                  f"{tuple(split.train.input_shape)}): {str(exc).splitlines()[0]}"
                                  f"{_shape_hint(source, split)}") from None
    scores = class_scores(out)
    if int(scores.shape[1]) != split.num_classes:
        raise DataResolutionError(
            f"Class-count mismatch: the model outputs {int(scores.shape[1])} classes but the data {source!r} has "
            f"{split.num_classes}. Use the data the model was trained on."
        )


def _shape_hint(source: str, split: DataSplit) -> str:
    """How to keep a manifest's columns flat, when a square count of them may have been read as an image by default."""
    shape = split.train.input_shape
    if source.split(":")[0] in ("csv", "parquet") and "shape=" not in source and len(shape) == 3 and shape[0] == 1:
        return (f"; a manifest's {shape[1] * shape[2]} pixel or feature columns make a 1x{shape[1]}x{shape[2]} image "
                "by default (a square count): add ?shape=flat to the source to keep them flat")
    return ""
