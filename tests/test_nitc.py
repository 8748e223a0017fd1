"""NITC and its components: curriculum ordering, UNSIR noise labels, class- and sample-wise forgetting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from measure import accuracy
from torch import nn
from torch.utils.data import DataLoader

from mlflow_unlearn import runtime as rt
from mlflow_unlearn.data import SampleSet, load_data, resolve_forget
from mlflow_unlearn.data.nonmember import carve_out_mask
from mlflow_unlearn.methods import build_config, run_method
from mlflow_unlearn.methods._loops import predict_logits, random_subset, recalibrate_norm_stats
from mlflow_unlearn.methods.bad_teacher import distill, kl_to_teacher, randomly_initialised_copy, with_temperatures
from mlflow_unlearn.methods.curriculum import (
    curriculum_order,
    difficulty_scores,
    sample_difficulty,
    staged_subsets,
)
from mlflow_unlearn.methods.nitc import (
    FORGET_BATCH,
    FORGET_EXTRA_PASSES,
    FORGOTTEN_SHARE,
    NONMEMBER_LOSS_RISE,
    find_head,
    forget_below_head,
    mask_classes,
    sample_losses,
    stage_epochs,
)
from mlflow_unlearn.methods.registry import UnlearnContext, config_to_dict
from mlflow_unlearn.methods.unsir import UnsirConfig, impair_and_repair, learn_error_max_noise
from mlflow_unlearn.models import create_model
from mlflow_unlearn.models.surgery import head_suffix, traced_suffix
from mlflow_unlearn.training import TrainConfig, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


@pytest.fixture(scope="module")
def original(digits):
    torch.manual_seed(0)
    model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    model, _ = train(model, digits.train, TrainConfig(epochs=5, seed=0), device="cpu")
    return model.eval()


# ------------------------------------------------------------------------------------------------ curriculum
def test_curriculum_order_is_by_sample_identity_and_ignores_shuffling(digits, original):
    data = digits.train.subset(np.arange(300))
    scores = sample_difficulty(original, data, device=CPU)
    reference = difficulty_scores(original(data.to_tensors()[0]).detach(), data.y)
    assert torch.allclose(scores, reference, atol=1e-5)

    # A shuffled loader must not change which score belongs to which sample.
    shuffled_loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_difficulty(original, shuffled_loader, device=CPU), scores)

    # Shuffling the dataset itself permutes the scores with the samples: the order by ID is unchanged.
    perm = np.random.default_rng(1).permutation(len(data))
    permuted = data.subset(perm)
    permuted_scores = sample_difficulty(original, permuted, device=CPU)
    position = {int(i): k for k, i in enumerate(data.ids)}
    back = torch.as_tensor([position[int(i)] for i in permuted.ids])
    assert torch.allclose(permuted_scores, scores[back], atol=1e-5)  # score i still belongs to sample i
    ids_by_difficulty = permuted.ids[curriculum_order(permuted_scores)]
    # The same sequence of difficulties; ties (samples at ~zero loss) may swap places.
    assert np.allclose(scores.numpy()[[position[int(i)] for i in ids_by_difficulty]],
                       np.sort(scores.numpy()), atol=1e-5)

    # Easy to hard: scores along the order never decrease, and the hardest sample comes last.
    ordered = scores[torch.as_tensor(curriculum_order(scores))]
    assert bool((ordered[1:] >= ordered[:-1]).all())
    assert int(curriculum_order(scores)[-1]) == int(scores.argmax())


def test_staged_subsets_are_cumulative_easy_first():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.0])
    stages = staged_subsets(curriculum_order(scores), 3)
    assert [s.tolist() for s in stages] == [[5, 1], [5, 1, 3, 2], [5, 1, 3, 2, 4, 0]]


def test_partitioned_stages_are_easy_to_hard_slices_covering_each_sample_once():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.0, 0.2])
    stages = staged_subsets(curriculum_order(scores), 3, cumulative=False)
    assert [s.tolist() for s in stages] == [[5, 1, 6], [3, 2], [4, 0]]
    assert sorted(np.concatenate(stages).tolist()) == list(range(7))


def test_mask_classes_leaves_no_mass_on_forgotten_classes_and_keeps_the_rest():
    logits = torch.tensor([[5.0, 1.0, 0.0, -2.0], [0.0, 9.0, 3.0, 1.0]])
    masked = mask_classes(logits, (0, 1))
    probs = masked.softmax(1)
    assert torch.isfinite(masked).all()
    assert float(probs[:, :2].max()) < 1e-12
    assert torch.equal(masked[:, 2:], logits[:, 2:])
    assert torch.equal(logits[0], torch.tensor([5.0, 1.0, 0.0, -2.0]))  # input not modified


# ------------------------------------------------------------------------------------------------ unsir noise
def test_noise_is_labelled_with_the_real_forget_classes(original):
    noise, labels = learn_error_max_noise(original, [3, 7], input_shape=(1, 8, 8), per_class=4, steps=5, lr=0.1,
                                          l2=0.1, device=CPU, bounds=(0.0, 1.0))
    assert sorted(set(labels.tolist())) == [3, 7]
    assert labels.tolist() == [3] * 4 + [7] * 4
    assert noise.shape == (8, 1, 8, 8) and float(noise.min()) >= 0.0 and float(noise.max()) <= 1.0
    with torch.no_grad():
        loss_noise = torch.nn.functional.cross_entropy(original(noise), labels)
    start = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss_random = torch.nn.functional.cross_entropy(original(start), labels)
    assert loss_noise > loss_random  # error-maximizing for the forget classes


def test_impair_step_trains_on_noise_with_forget_labels(digits, original, monkeypatch):
    import mlflow_unlearn.methods.unsir as unsir_module

    seen = []
    real_fit = unsir_module.fit

    def spy(model, data, loss_fn, **kwargs):
        if kwargs["stage"].endswith("impair"):
            seen.append(torch.stack([data[i][1] for i in range(len(data))]))
        return real_fit(model, data, loss_fn, **kwargs)

    monkeypatch.setattr(unsir_module, "fit", spy)
    split = resolve_forget(digits, "classes:2,5")
    ctx = UnlearnContext(CPU, 10, "class", (2, 5), 0)
    for per_forget in (1.0, 0.5):
        config = UnsirConfig(noise_samples=8, noise_steps=2, retain_fraction=0.1, impair_lr=1e-3, repair_lr=1e-3,
                             noise_per_forget=per_forget)
        impair_and_repair(randomly_initialised_copy(original, seed=0), forget_labels=split.forget.y,
                          retain=split.retain, input_shape=(1, 8, 8), config=config, context=ctx, history=rt.History())
    counts = {c: int((split.forget.y == c).sum()) for c in (2, 5)}
    retain_part = round(0.1 * len(split.retain))
    for labels, per_forget in zip(seen, (1.0, 0.5), strict=True):
        rows = {c: round(counts[c] * per_forget) for c in (2, 5)}
        assert len(labels) == sum(rows.values()) + retain_part
        noise_part = labels[: sum(rows.values())]
        assert {int(c) for c in noise_part.unique()} == {2, 5}  # never all 0
        assert int((noise_part == 2).sum()) == rows[2] and int((noise_part == 5).sum()) == rows[5]


# ------------------------------------------------------------------------------------------------ nitc
def test_nitc_class_forgetting_drops_forget_accuracy_and_keeps_retain(digits, original):
    split = resolve_forget(digits, "classes:3")
    result = run_method("nitc", original, forget=split.forget, retain=split.retain, device="cpu", forget_kind="class",
                        forget_classes=split.forget_classes, seed=0)
    assert accuracy(original, split.forget) > 0.9
    assert accuracy(result.model, split.forget) < 0.1
    assert accuracy(result.model, split.retain) > accuracy(original, split.retain) - 0.03
    # the masked original is the teacher: no UNSIR noise, impair or repair step
    assert list(dict.fromkeys(r["stage"] for r in result.history.records)) == ["distill_stage0", "distill_stage1"]


@pytest.mark.parametrize("lr", [1e-4, 1e-6])
def test_a_slow_student_distils_on_until_the_forget_samples_are_forgotten(digits, original, lr):
    """After its stages, passes over all its samples until the forgotten class is no longer predicted, at most
    ``FORGET_EXTRA_PASSES`` (a step size of 1e-6 never gets there)."""
    split = resolve_forget(digits, "classes:3")
    result = run_method("nitc", original, forget=split.forget, retain=split.retain, config={"lr": lr}, device="cpu",
                        forget_kind="class", forget_classes=split.forget_classes, seed=0)
    extra = result.history.extra["extra_passes"]
    assert [r["stage"] for r in result.history.records].count("distill_until_forgotten") == extra
    if lr == 1e-4:
        assert 1 <= extra < FORGET_EXTRA_PASSES
        assert accuracy(result.model, split.forget) <= FORGOTTEN_SHARE
    else:
        assert extra == FORGET_EXTRA_PASSES and accuracy(result.model, split.forget) > FORGOTTEN_SHARE


def test_class_wise_checks_and_statistics_read_bounded_seeded_subsets(digits, original, monkeypatch):
    """On large data the forgotten-share check and the BatchNorm re-estimation read at most their caps."""
    import mlflow_unlearn.methods.nitc as nitc_module

    read = {"check": [], "norm": []}
    real_share, real_norm = nitc_module.still_predicted_share, nitc_module.recalibrate_norm_stats
    monkeypatch.setattr(nitc_module, "CHECK_SAMPLES", 50)
    monkeypatch.setattr(nitc_module, "NORM_STATS_SAMPLES", 100)
    monkeypatch.setattr(nitc_module, "still_predicted_share",
                        lambda model, data, *a: read["check"].append(len(data)) or real_share(model, data, *a))
    monkeypatch.setattr(nitc_module, "recalibrate_norm_stats",
                        lambda model, data, **k: read["norm"].append(len(data)) or real_norm(model, data, **k))
    split = resolve_forget(digits, "classes:3")
    assert len(split.forget) > 100
    run_method("nitc", original, forget=split.forget, retain=split.retain, config={"lr": 1e-4}, device="cpu",
               forget_kind="class", forget_classes=split.forget_classes, seed=0)
    assert len(read["check"]) >= 2 and set(read["check"]) == {50} and read["norm"] == [100]


def test_class_wise_nitc_leaves_batchnorm_statistics_of_all_the_students_samples(digits, original):
    """Not those of the last (hardest) stage's batches: the forget samples and the retain subset, all of them."""
    split = resolve_forget(digits, "classes:3")
    config = build_config("nitc", {})
    result = run_method("nitc", original, forget=split.forget, retain=split.retain, device="cpu", forget_kind="class",
                        forget_classes=split.forget_classes, seed=0)
    conv, norm = result.model.features[0], result.model.features[1]
    retain_part = random_subset(split.retain, config.retain_fraction, seed=1)
    with torch.no_grad():
        x = torch.stack([retain_part[i][0] for i in range(len(retain_part))])
        with_forget = torch.cat([x, torch.stack([split.forget[i][0] for i in range(len(split.forget))])])
        retain_mean = conv(x).mean(dim=(0, 2, 3))
        students_mean = conv(with_forget).mean(dim=(0, 2, 3))
    assert not torch.allclose(retain_mean, students_mean, atol=1e-3)  # the forget samples count
    torch.testing.assert_close(norm.running_mean, students_mean, atol=1e-4, rtol=1e-4)
    assert norm.momentum == 0.1 and not result.model.training


def test_recalibrate_norm_stats_restores_modes_and_momenta_and_skips_dropout():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.9), nn.BatchNorm1d(4, momentum=0.3), nn.BatchNorm1d(4,
                        track_running_stats=False))
    net.train()
    net[0].eval()
    data = torch.utils.data.TensorDataset(torch.randn(50, 3))
    assert recalibrate_norm_stats(net, data, device=CPU, batch_size=7) == 1
    with torch.no_grad():
        hidden = net[0](data.tensors[0])  # dropout was in eval mode during the pass: no sample was zeroed
    # batches of 7, 7, ..., 1: each counts by its size; the trailing single sample cannot train BatchNorm
    torch.testing.assert_close(net[2].running_mean, hidden[:49].mean(0), atol=1e-5, rtol=1e-5)
    assert net[2].momentum == 0.3 and net[2].training and net[1].training and not net[0].training
    assert recalibrate_norm_stats(nn.Linear(2, 2), data, device=CPU) == 0


@pytest.mark.parametrize("min_steps", [1, 40, 90])
def test_the_student_takes_at_least_min_steps_and_one_pass(digits, original, min_steps):
    """A stage whose data makes fewer batches than its share of ``min_steps`` is repeated; 1 = one pass each."""
    split = resolve_forget(digits, "classes:3")
    config = {"min_steps": min_steps, "batch_size": 64}
    result = run_method("nitc", original, forget=split.forget, retain=split.retain, config=config, device="cpu",
                        forget_kind="class", forget_classes=split.forget_classes, seed=0)
    per_stage = -(-min_steps // 2)
    for stage in ("distill_stage0", "distill_stage1"):
        records = [r for r in result.history.records if r["stage"] == stage]
        taken, first_pass = records[-1]["steps"], records[0]["steps"]
        # a full first pass always; more only up to the stage's share of min_steps, and not one step beyond it
        assert taken == max(per_stage, first_pass), (stage, taken, first_pass, per_stage)


def test_sample_wise_nitc_keeps_the_impaired_teacher(digits, original):
    mask = np.zeros(len(digits.train), dtype=bool)
    mask[::10] = True
    sample = run_method("nitc", original, forget=digits.train.subset(mask), retain=digits.train.subset(~mask),
                        device="cpu", forget_kind="sample", seed=0)
    stages = list(dict.fromkeys(r["stage"] for r in sample.history.records))
    assert stages[:3] == ["teacher_noise", "teacher_impair", "teacher_repair"]
    assert stages[3:] == ["head_stage0", "head_stage1"]


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 100.0])
def test_each_stage_of_the_reinitialised_classifier_ends_within_tolerance_or_at_its_passes(digits, original,
                                                                                            tolerance):
    """A stage trains pass by pass until a pass's mean KL is within ``head_tolerance`` (0: every pass), and never for
    more than its share of ``head_epochs``."""
    mask = np.zeros(len(digits.train), dtype=bool)
    mask[::10] = True
    config = {"head_epochs": 8, "head_tolerance": tolerance}
    result = run_method("nitc", original, forget=digits.train.subset(mask), retain=digits.train.subset(~mask),
                        config=config, device="cpu", forget_kind="sample", seed=0)
    for stage, passes in enumerate(stage_epochs(8, 2)):
        losses = [r["loss"] for r in result.history.records if r["stage"] == f"head_stage{stage}"]
        assert 1 <= len(losses) <= passes
        assert all(loss > tolerance for loss in losses[:-1]), (stage, losses)  # no pass within it before the last
        assert len(losses) == passes or losses[-1] <= tolerance, (stage, losses)
    if tolerance == 100.0:  # any loss is within it: one pass per stage
        assert [r["stage"] for r in result.history.records if r["stage"].startswith("head")] == ["head_stage0",
                                                                                                "head_stage1"]


@pytest.fixture(scope="module")
def memorising(digits):
    """A smallcnn trained on 400 digits samples until it fits every one (forget accuracy 100%, test 94.7%), a
    random fifth of them to forget."""
    train_part = digits.train.subset(np.arange(400))
    torch.manual_seed(0)
    model = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    model, _ = train(model, train_part, TrainConfig(epochs=40, seed=0), device="cpu")
    mask = np.zeros(len(train_part), dtype=bool)
    mask[np.random.default_rng(0).permutation(len(mask))[: len(mask) // 5]] = True
    return model.eval(), train_part.subset(mask), train_part.subset(~mask)


def _near_test_level(model, original, forget, test) -> bool:
    """``model``'s forget accuracy is at least half of the way from ``original``'s to ``model``'s test level."""
    def gap(m):
        return abs(accuracy(m, forget) - accuracy(m, test))
    return gap(model) <= 0.5 * gap(original)


def test_the_near_test_level_check_fails_for_the_unchanged_model(digits, memorising):
    """An identity method returns the original, which the check below refuses."""
    original, forget, _ = memorising
    assert accuracy(original, forget) == 1.0
    assert not _near_test_level(original, original, forget, digits.test)


def _nonmembers(test):
    """``(non-members, the test samples left)``: the carve-out the plan makes when a source names no ``val`` part."""
    mask = carve_out_mask(test.y.numpy(), test.ids, seed=0)
    return test.subset(mask), test.subset(~mask)


@pytest.mark.xfail(strict=True, reason="measured: forget 98.8% vs test 93.7% after nitc, 100% vs 94.4% before: on "
                                       "this CNN its step below the classifier is undone (not selective); with that "
                                       "check off, 2 steps left 98.8% vs 93.1% (issue 26's B-mem target)")
def test_nitc_sample_forgetting_keeps_forget_accuracy_near_test_level(digits, memorising):
    original, forget, retain = memorising
    nonmember, test = _nonmembers(digits.test)
    result = run_method("nitc", original, forget=forget, retain=retain, device="cpu", forget_kind="sample", seed=0,
                        nonmember=nonmember)
    assert accuracy(result.model, retain) > 0.95
    assert accuracy(result.model, forget) > 0.6  # not pushed to random predictions (10%)
    assert _near_test_level(result.model, original, forget, test)
    assert result.history.extra["forget_steps"] > 0


def test_without_nonmembers_sample_wise_nitc_leaves_the_layers_below_its_classifier_as_the_teacher_left_them(
        digits, memorising):
    original, forget, retain = memorising
    result = run_method("nitc", original, forget=forget, retain=retain, device="cpu", forget_kind="sample", seed=0)
    assert "forget_steps" not in result.history.extra
    assert not any(record["stage"] == "forget_below_head" for record in result.history.records)


def mean_loss(model, data, *, device):
    return float(sample_losses(model, data, device=device).mean())


def _forget_below_head(original, forget, retain, nonmember, epochs=50):
    model = copy.deepcopy(original)
    config = build_config("nitc", {"forget_epochs": epochs})
    history = rt.History()
    model = forget_below_head(model, model.head, forget=forget, retain=retain,
                              retain_targets=predict_logits(original, retain, device=CPU), nonmember=nonmember,
                              config=config, context=UnlearnContext(CPU, 10, "sample", (), 0, nonmember),
                              history=history)
    return model, history.extra["forget_steps"]


def test_forget_below_head_raises_the_forget_loss_below_the_classifier_only(digits, memorising, monkeypatch):
    """With the log-loss selectivity check off: it ends within one standard error of the non-members' mean loss, or
    where the next step would raise theirs by more than ``NONMEMBER_LOSS_RISE`` (that step undone); the classifier
    and the BatchNorm statistics stay as they were."""
    import mlflow_unlearn.methods.nitc as nitc_module

    monkeypatch.setattr(nitc_module, "SELECTIVITY", 0.0)
    original, forget, retain = memorising
    nonmember, _ = _nonmembers(digits.test)
    level, start = mean_loss(original, nonmember, device=CPU), mean_loss(original, forget, device=CPU)
    assert start < level / 10  # memorised: far below the unseen samples' loss
    model, steps = _forget_below_head(original, forget, retain, nonmember)
    assert 0 < steps < 50 * -(-len(forget) // FORGET_BATCH)  # stopped by a level, not by the budget
    assert mean_loss(model, forget, device=CPU) > 2 * start
    assert mean_loss(model, nonmember, device=CPU) <= (1 + NONMEMBER_LOSS_RISE) * level
    for (name, before), after in zip(original.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(before, after) == name.startswith("head."), name  # the classifier is fixed
    for before, after in zip(original.buffers(), model.buffers(), strict=True):
        assert torch.equal(before, after)  # BatchNorm statistics frozen
    assert accuracy(model, retain) > 0.9


def test_forget_below_head_measures_its_levels_on_at_most_check_samples(digits, memorising, monkeypatch):
    import mlflow_unlearn.methods.nitc as nitc_module

    original, forget, retain = memorising
    nonmember, _ = _nonmembers(digits.test)
    sizes = []
    real = nitc_module.sample_losses

    def spy(model, data, *, device):
        sizes.append(len(data))
        return real(model, data, device=device)

    monkeypatch.setattr(nitc_module, "CHECK_SAMPLES", 20)
    monkeypatch.setattr(nitc_module, "SELECTIVITY", 0.0)
    monkeypatch.setattr(nitc_module, "sample_losses", spy)
    _, steps = _forget_below_head(original, forget, retain, nonmember)
    assert steps > 0 and len(sizes) >= 4 and set(sizes) == {20}  # 80 forget samples, 33 non-members: 20 of each


def test_forget_below_head_undoes_a_step_that_raises_every_samples_log_loss_alike(digits, memorising):
    """On this CNN the layers below the classifier are shared by every sample: the first step raises the
    non-members' mean log-loss by more than two thirds of what it adds to the forget samples' (1.31 times
    as much to theirs, measured), so it is undone."""
    original, forget, retain = memorising
    nonmember, _ = _nonmembers(digits.test)
    model, steps = _forget_below_head(original, forget, retain, nonmember)
    assert steps == 0
    for before, after in zip(original.parameters(), model.parameters(), strict=True):
        assert torch.equal(before, after)


def test_forget_below_head_undoes_a_step_that_raises_the_nonmembers_loss(digits, memorising, monkeypatch):
    """Non-members that are the forget samples themselves (and one unseen sample, so that their mean loss is
    higher): no step can raise the forget samples' loss without raising theirs; with no rise allowed, the first step
    is undone."""
    import mlflow_unlearn.methods.nitc as nitc_module

    monkeypatch.setattr(nitc_module, "NONMEMBER_LOSS_RISE", 0.0)
    original, forget, retain = memorising
    logits = predict_logits(original, digits.test, device=CPU)
    loss = F.cross_entropy(logits, digits.test.y, reduction="none")
    loss[logits.argmax(1) != digits.test.y] = 0  # the least sure of the unseen samples the model gets right
    unseen = digits.test.subset(np.asarray([int(loss.argmax())]))
    x, y = forget.to_tensors()
    nonmember = SampleSet(torch.cat([x, unseen.to_tensors()[0]]), torch.cat([y, unseen.y]),
                          np.concatenate([forget.ids, unseen.ids]), 10)
    assert mean_loss(original, forget, device=CPU) < mean_loss(original, nonmember, device=CPU)
    model, steps = _forget_below_head(original, forget, retain, nonmember)
    assert steps == 0
    for before, after in zip(original.parameters(), model.parameters(), strict=True):
        assert torch.equal(before, after)


def test_sample_wise_nitc_retrains_the_classifier_on_retain_features_only(digits, original, monkeypatch):
    import mlflow_unlearn.methods.nitc as nitc_module

    seen = []
    real_fit = nitc_module.fit

    def spy(model, data, loss_fn, **kwargs):
        seen.append((model, data.tensors[0], data.tensors[1]))
        return real_fit(model, data, loss_fn, **kwargs)

    monkeypatch.setattr(nitc_module, "fit", spy)
    mask = np.zeros(len(digits.train), dtype=bool)
    mask[np.random.default_rng(3).permutation(len(mask))[: len(mask) // 10]] = True
    forget, retain = digits.train.subset(mask), digits.train.subset(~mask)
    result = run_method("nitc", original, forget=forget, retain=retain, device="cpu", forget_kind="sample", seed=0)
    assert [model for model, _, _ in seen] == [result.model.head] * len(seen)  # only the classifier trains
    features, targets = seen[-1][1], seen[-1][2]
    assert features.shape == (len(retain), 64, 4, 4)  # the last stage: every retain sample, no forget sample
    assert targets.shape[1] == 12 and targets[:, -1].eq(1.0).all()  # 10 logits, temperature, weight
    assert result.history.extra["head"] == "head"
    assert accuracy(result.model, retain) > accuracy(original, retain) - 0.03


def test_the_new_classifiers_batchnorm_takes_its_statistics_from_all_retain_features(digits):
    """Not from the last stage's last batches: the statistics of every retain sample's features."""
    torch.manual_seed(0)
    model = create_model("bncnn", in_channels=1, num_classes=10, input_size=8)
    model, _ = train(model, digits.train, TrainConfig(epochs=2, seed=0), device="cpu")
    mask = np.zeros(len(digits.train), dtype=bool)
    mask[np.random.default_rng(3).permutation(len(mask))[: len(mask) // 10]] = True
    forget, retain = digits.train.subset(mask), digits.train.subset(~mask)
    result = run_method("nitc", model.eval(), forget=forget, retain=retain, device="cpu", forget_kind="sample", seed=0)
    net = result.model.eval()
    assert result.history.extra["head"] == "features.8..classifier"  # the last conv block, its BatchNorm, onwards
    with torch.no_grad():
        x = torch.stack([retain[i][0] for i in range(len(retain))])
        hidden = net.features[8](net.features[:8](x))
    torch.testing.assert_close(net.features[9].running_mean, hidden.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)


def test_find_head_falls_back_to_the_last_linear_layer():
    mlp = create_model("mlp", in_channels=1, num_classes=10, input_size=8)
    name, module = find_head(mlp, None, torch.zeros(2, 1, 8, 8))
    assert name == "net.5" and module is mlp.net[5]
    with pytest.raises(ValueError, match="no submodule"):
        find_head(mlp, "head", torch.zeros(2, 1, 8, 8))


def test_a_small_classifier_is_extended_backwards_to_the_share_of_weights_asked_for(digits):
    """mlp's classifier (net.5) holds 3% of its weights on 8x8 digits; ``head_min_share`` re-initialises net[3:]."""
    torch.manual_seed(0)
    mlp = create_model("mlp", in_channels=1, num_classes=10, input_size=8)
    mlp, _ = train(mlp, digits.train, TrainConfig(epochs=3, seed=0), device="cpu")
    name, head = find_head(mlp, None, torch.zeros(2, 1, 8, 8))
    assert head_suffix(mlp, name, head, 0.0)[0] == "net.5"
    label, layers, start = head_suffix(mlp, name, head, 0.2)
    assert label == "net[3:]" and list(layers) == list(mlp.net)[3:] and start is mlp.net[3]
    assert head_suffix(mlp, name, head, 1.0)[0] == "net[3:]"  # never every weight (net.1 stays below)
    smallcnn = create_model("smallcnn", in_channels=1, num_classes=10, input_size=8)
    assert head_suffix(smallcnn, "head", smallcnn.head, 0.5)[0] == "head"  # already 88% of the weights

    mask = np.zeros(len(digits.train), dtype=bool)
    mask[np.random.default_rng(3).permutation(len(mask))[: len(mask) // 10]] = True
    forget, retain = digits.train.subset(mask), digits.train.subset(~mask)
    result = run_method("nitc", mlp, forget=forget, retain=retain, config={"head_min_share": 0.2}, device="cpu",
                        forget_kind="sample", seed=0)
    extra = result.history.extra
    share = sum(p.numel() for p in layers.parameters()) / sum(p.numel() for p in mlp.parameters())
    assert extra["head"] == "net[3:]" and extra["head_weight_fraction"] == pytest.approx(share)  # 0.80 on 8x8
    weights = dict(result.model.named_parameters())
    for key, value in mlp.named_parameters():  # the re-initialised layers moved from the original's, the rest
        moved = not torch.allclose(weights[key], value)  # is the teacher's (moved a little by UNSIR)
        assert moved, key
    assert accuracy(result.model, retain) > accuracy(mlp, retain) - 0.05


class GapCNN(nn.Module):
    """A user's class: layers as attributes, functions in ``forward``, global average pooling, a 1% classifier."""

    def __init__(self, skip: bool = False) -> None:
        super().__init__()
        self.skip = skip
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(x))
        y = F.relu(self.bn3(self.conv3(F.relu(h))))
        return self.fc((y + h if self.skip else y).mean(dim=(2, 3)))  # skip: from below conv3's input


def test_a_small_classifier_of_a_users_class_is_extended_backwards_through_its_traced_forward(digits):
    """No nn.Sequential to follow: the run of layers comes from the torch.fx graph, and re-initialising and training it
    trains the model's own layers; a sample-wise NITC run re-initialises all of them."""
    torch.manual_seed(0)
    data = digits.train.subset(np.arange(720))  # a part of it keeps the test short
    model = GapCNN()
    model, _ = train(model, data, TrainConfig(epochs=6, batch_size=32, seed=0, optimizer="adam", lr=0.01), device="cpu")
    name, head = find_head(model, None, torch.zeros(2, 1, 8, 8))
    assert name == "fc" and head_suffix(model, name, head, 0.0)[0] == "fc"  # 1% of the weights
    label, layers, start = head_suffix(model, name, head, 0.2)
    assert label == "conv3..fc" and start is model.conv3
    assert {id(p) for p in layers.parameters()} == {id(p) for m in (model.conv3, model.bn3, model.fc)
                                                    for p in m.parameters()}
    x = digits.test.to_tensors()[0][:16]
    model.eval()
    with torch.no_grad():
        features = F.relu(model.bn2(model.conv2(F.relu(model.bn1(model.conv1(x))))))
        assert torch.allclose(layers(features), model(x), atol=1e-5)  # the rest of the forward, from the cut
    assert head_suffix(model, name, head, 0.9)[0] == "conv2..fc"  # never every weight: conv1 and bn1 stay

    mask = np.zeros(len(data), dtype=bool)
    mask[np.random.default_rng(3).permutation(len(mask))[: len(mask) // 10]] = True
    forget, retain = data.subset(mask), data.subset(~mask)
    result = run_method("nitc", model, forget=forget, retain=retain, device="cpu", forget_kind="sample", seed=0)
    assert type(result.model) is GapCNN and result.history.extra["head"] == "conv3..fc"
    assert result.model.state_dict().keys() == model.state_dict().keys()
    weights = dict(result.model.named_parameters())
    for key in ("conv3.weight", "conv3.bias", "fc.weight", "fc.bias"):
        assert not torch.allclose(weights[key], dict(model.named_parameters())[key]), key
    assert accuracy(result.model, retain) > accuracy(model, retain) - 0.05


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.mix(self.mix(self.conv(x).mean(dim=(2, 3)))))


class ValueDependent(GapCNN):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor's value: torch.fx cannot trace it
            x = x * 2
        return super().forward(x)


def test_the_traced_run_starts_only_where_nothing_below_is_read_again():
    """A residual connection from bn2's output to the classifier rules out the cuts above bn2 (conv3, bn3), so the run
    starts at bn2; a layer called twice, or a forward that cannot be traced, keeps the classifier alone."""
    skip = GapCNN(skip=True)
    assert traced_suffix(skip, "fc", skip.fc, 0.2)[0] == "bn2..fc"
    label, layers, start = head_suffix(skip, "fc", skip.fc, 0.2)
    skip.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        below = skip.conv2(F.relu(skip.bn1(skip.conv1(x))))
        assert label == "bn2..fc" and start is skip.bn2 and torch.allclose(layers(below), skip(x), atol=1e-5)
    twice = CalledTwice()
    assert traced_suffix(twice, "fc", twice.fc, 0.9) is None and head_suffix(twice, "fc", twice.fc, 0.9)[0] == "fc"
    untraceable = ValueDependent()
    assert head_suffix(untraceable, "fc", untraceable.fc, 0.2) == ("fc", untraceable.fc, None)


def test_nitc_config_nests_the_unsir_teacher():
    config = build_config("nitc", {"teacher": {"noise_steps": 3}})
    assert isinstance(config.teacher, UnsirConfig)
    assert config.teacher.noise_steps == 3 and config.teacher.noise_samples == 16  # NITC's other teacher defaults
    assert config_to_dict(config)["teacher.noise_steps"] == 3


def test_per_sample_temperatures_take_each_samples_kl_at_its_own_temperature():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    temps = torch.tensor([1.0, 1.0, 1.0, 4.0, 4.0, 4.0])
    per_sample = kl_to_teacher(student, teacher, temps)
    by_group = (kl_to_teacher(student[:3], teacher[:3], 1.0) + kl_to_teacher(student[3:], teacher[3:], 4.0)) / 2
    assert torch.allclose(per_sample, by_group, atol=1e-6)
    assert torch.allclose(kl_to_teacher(student, teacher, torch.full((6,), 2.0)), kl_to_teacher(student, teacher, 2.0),
                          atol=1e-6)
    assert with_temperatures(teacher, 4.0).shape == (6, 5)
    assert with_temperatures(teacher, 4.0)[:, -1].eq(4.0).all()


def _distilled_confidence(original, x, targets, temperature):
    """Mean probability of the original's label after one SGD pass of distillation towards ``targets``."""
    student = copy.deepcopy(original)
    context = UnlearnContext(CPU, 10, "sample", (), 0)
    data = torch.utils.data.TensorDataset(x, targets)
    student = distill(student, data, temperature=temperature, context=context, epochs=1, lr=0.01, batch_size=32,
                      optimizer="sgd", history=rt.History(), stage="distill")
    labels = original(x).argmax(1)
    with torch.no_grad():
        return float(student.eval()(x).softmax(1).gather(1, labels[:, None]).mean())


def test_a_higher_forget_temperature_moves_a_near_certain_student_towards_its_teacher(digits, original):
    """At T=1 the KL gradient vanishes on memorised (near-certain) samples; softening both sides restores it."""
    x = digits.train.to_tensors()[0][:256]
    with torch.no_grad():
        logits = original(x)
    teacher = logits / 1.5  # agrees on every label and is confident, only less so than the student
    before = float(logits.softmax(1).max(1).values.mean())
    at_one = _distilled_confidence(original, x, teacher, 1.0)
    at_four = _distilled_confidence(original, x, with_temperatures(teacher, 4.0), None)
    assert before > 0.98 and float(teacher.softmax(1).max(1).values.mean()) > 0.95
    assert at_one > before - 0.01  # at T=1 the student barely moves
    assert at_four < at_one - 0.03


@pytest.mark.parametrize(
    "overrides",
    [
        {"lr": -1.0},
        {"num_stages": 0},
        {"num_stages": 1.5},
        {"retain_fraction": 1.5},
        {"difficulty": "entropy"},
        {"retain_pacing": "geometric"},
        {"temperature": 0.0},
        {"forget_temperature": -4.0},
        {"teacher": {"optimizer": "lbfgs"}},
        {"teacher": {"noise_l2": -0.1}},
        {"teacher": {"batch_size": 0}},
        {"teacher": {"batch_size": 32.5}},
        {"teacher": {"no_such_key": 1}},
        {"teacher": "strong"},
        {"head_epochs": 0},
        {"head_tolerance": -0.1},
        {"head_tolerance": "small"},
        {"head_tolerance": True},
        {"head_module": ""},
        {"optimizer": "auto"},
        {"sample_student": "whole"},  # a variant that was tried and removed (benchmarks/RESULTS.md)
        {"no_such_key": 1},
    ],
)
def test_nitc_bad_config_raises(overrides):
    with pytest.raises(ValueError):
        build_config("nitc", overrides)


@pytest.mark.parametrize("name,overrides", [("unsir", {"impair_lr": 0}), ("bad_teacher", {"retain_fraction": 0.0}),
                                            ("bad_teacher", {"temperature": -1})])
def test_component_bad_config_raises(name, overrides):
    with pytest.raises(ValueError):
        build_config(name, overrides)


def test_nitc_nan_loss_raises_diverged(digits, original):
    split = resolve_forget(digits, "classes:3")
    broken = randomly_initialised_copy(original, seed=0)
    with torch.no_grad():
        broken.head[-1].weight.fill_(float("nan"))
    with pytest.raises(rt.UnlearningDivergedError):
        run_method("nitc", broken, forget=split.forget, retain=split.retain, device="cpu", forget_kind="class",
                   forget_classes=split.forget_classes)
