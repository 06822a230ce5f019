"""Vision models in training/model.py: the BatchNorm policy (statistics, affine gradients,
gradient accumulation), bn_momentum, label smoothing, and layer-wise decay / freezing for
ResNet stages, ConvNeXt stages and ViT layers with the exact scale of every parameter."""

import numpy as np
import pytest
import torch
from support import build_tiny_vision_model

from raytune_ft.config import TrainConfig
from raytune_ft.tasks import get_task
from raytune_ft.tasks.image_classification import ImageSplit, pixel_values
from raytune_ft.training.loop import FineTuneLoop
from raytune_ft.training.model import batchnorm_layers, parameter_groups, train_mode

TASK = get_task("image_classification")
LABELS = [str(i) for i in range(4)]


@pytest.fixture(scope="module")
def images():
    """32 random 3x16x16 images of 4 classes, as the task encodes them."""
    from raytune_ft.tasks import DataBundle

    rng = np.random.default_rng(0)
    split = ImageSplit(rng.integers(0, 256, (32, 3, 16, 16), dtype=np.uint8),
                       np.arange(32, dtype=np.int64) % 4, 1 / 255,
                       np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32))
    return DataBundle(split, split, LABELS, 0, "random", ["eval_accuracy", "eval_loss"],
                      "image_classification")


def model(path, seed=0):
    return TASK.load_model(str(path), LABELS, seed)


def batchnorm_state(net):
    stats = {f"{n}.{k}": b.clone() for n, m in batchnorm_layers(net)
             for k, b in (("running_mean", m.running_mean), ("running_var", m.running_var))}
    affine = {f"{n}.{k}": p.detach().clone() for n, m in batchnorm_layers(net)
              for k, p in m.named_parameters(recurse=False)}
    return stats, affine


@pytest.mark.parametrize("policy", ["train", "eval", "frozen"])
def test_each_policy_moves_exactly_what_it_says(tiny_resnet, images, policy):
    net = model(tiny_resnet)
    hp = TrainConfig(learning_rate=1e-2, batch_size=8, max_epochs=2, eval_every_epochs=1,
                     batchnorm=policy, max_micro_batch=8)
    loop = FineTuneLoop(net, images, hp)
    stats, affine = batchnorm_state(net)
    conv = dict(net.named_parameters())["resnet.embedder.embedder.convolution.weight"]
    conv_before = conv.detach().clone()
    for _ in range(2):  # the second interval starts after evaluate() put the model in eval()
        loop.run_interval()
    stats_after, affine_after = batchnorm_state(net)
    stats_moved = [not torch.equal(stats[k], stats_after[k]) for k in stats]
    affine_moved = [not torch.equal(affine[k], affine_after[k]) for k in affine]
    assert all(stats_moved) if policy == "train" else not any(stats_moved)
    assert not any(affine_moved) if policy == "frozen" else all(affine_moved)
    assert not torch.equal(conv, conv_before)  # the rest trains under every policy
    for _, module in batchnorm_layers(net):
        for param in module.parameters(recurse=False):
            assert param.requires_grad is (policy != "frozen")
            assert (param.grad is None) is (policy == "frozen")


def test_a_frozen_stage_keeps_its_batchnorm_statistics_under_batchnorm_train(tiny_resnet,
                                                                            images):
    """freeze_embeddings/freeze_layers freeze a stage whole: its running statistics stay
    those it was loaded with, while the stages that train update theirs."""
    net = model(tiny_resnet)
    hp = TrainConfig(learning_rate=1e-2, batch_size=8, max_epochs=1, eval_every_epochs=1,
                     batchnorm="train", max_micro_batch=8, freeze_embeddings=True,
                     freeze_layers=1)
    loop = FineTuneLoop(net, images, hp)
    stats, _ = batchnorm_state(net)
    loop.run_interval()
    after, _ = batchnorm_state(net)
    frozen = ("resnet.embedder.", "resnet.encoder.stages.0.")
    assert any(k.startswith(frozen[1]) for k in stats)
    for key in stats:
        moved = not torch.equal(stats[key], after[key])
        assert moved is (not key.startswith(frozen)), key
    train_mode(net, hp)
    for name, module in batchnorm_layers(net):
        assert module.training is (not name.startswith(frozen)), name


def gradients(net, data, hp, indices, micro):
    """A step's gradient as the loop computes it: summed losses over the batch's units."""
    train_mode(net, hp)
    net.zero_grad(set_to_none=True)
    for part in np.array_split(indices, len(indices) // micro):
        batch = TASK.collate(data, data.eval, part)
        loss = TASK.loss(TASK.forward(net, {**batch, "pixels": batch["pixels"].double()}),
                         batch)
        (loss / len(indices)).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("policy", ["eval", "frozen"])
def test_eval_and_frozen_make_accumulation_the_big_batch_gradient(tiny_resnet, images, policy):
    hp = TrainConfig(batchnorm=policy)
    indices = np.arange(16)
    net = model(tiny_resnet).double()
    whole = gradients(net, images, hp, indices, micro=16)
    accumulated = gradients(net, images, hp, indices, micro=4)
    assert whole.keys() == accumulated.keys()
    for name in whole:  # float64: equal up to summation order
        assert torch.allclose(whole[name], accumulated[name], rtol=0, atol=1e-12), name


def test_train_computes_statistics_per_micro_batch(tiny_resnet, images):
    hp = TrainConfig(batchnorm="train")
    indices = np.arange(16)
    net = model(tiny_resnet).double()
    whole = gradients(net, images, hp, indices, micro=16)
    accumulated = gradients(net, images, hp, indices, micro=4)
    name = "resnet.embedder.embedder.convolution.weight"
    assert (whole[name] - accumulated[name]).abs().max() > 1e-4


def test_bn_momentum_sets_the_running_statistics_update(tiny_resnet, images):
    net = model(tiny_resnet)
    train_mode(net, TrainConfig(bn_momentum=0.3))
    stem = net.resnet.embedder.embedder
    before = stem.normalization.running_mean.clone()
    inputs = pixel_values(TASK.collate(images, images.eval, np.arange(8)))
    with torch.no_grad():
        features = stem.convolution(inputs)
        net(pixel_values=inputs)
    expected = 0.7 * before + 0.3 * features.mean(dim=(0, 2, 3))
    assert torch.allclose(stem.normalization.running_mean, expected, atol=1e-6)


def test_a_pbt_change_of_policy_takes_effect_at_the_next_interval(tiny_resnet, images):
    net = model(tiny_resnet)
    groups = parameter_groups(net, TrainConfig(batchnorm="frozen"))
    again = parameter_groups(net, TrainConfig(batchnorm="train"))
    # one group structure whatever the policy: a checkpoint's optimizer state loads
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in again]
    train_mode(net, TrainConfig(batchnorm="frozen"))
    assert not any(p.requires_grad for _, m in batchnorm_layers(net) for p in m.parameters())
    assert not any(m.training for _, m in batchnorm_layers(net))
    train_mode(net, TrainConfig(batchnorm="train"))
    assert all(p.requires_grad for _, m in batchnorm_layers(net) for p in m.parameters())
    assert all(m.training for _, m in batchnorm_layers(net))


def test_label_smoothing_trains_and_eval_loss_stays_the_nll(tiny_resnet, images, monkeypatch):
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    labels = torch.tensor([0])
    log_p = torch.log_softmax(logits, -1)
    expected = -(0.9 * log_p[0, 0] + 0.1 * log_p[0].mean())
    for task in (TASK, get_task("sequence_classification")):
        got = task.loss(logits, {"labels": labels}, label_smoothing=0.1)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(task.loss(logits, {"labels": labels}), -log_p[0, 0])
    seen = []
    original = type(TASK).loss

    def recording(self, outputs, batch, label_smoothing=0.0):
        seen.append((torch.is_grad_enabled(), label_smoothing))
        return original(self, outputs, batch, label_smoothing)

    monkeypatch.setattr(type(TASK), "loss", recording)
    hp = TrainConfig(batch_size=16, max_epochs=1, label_smoothing=0.2)
    FineTuneLoop(model(tiny_resnet), images, hp).run_interval()
    assert {ls for training, ls in seen if training} == {0.2}
    assert {ls for training, ls in seen if not training} == {0.0}


@pytest.mark.parametrize("kind,layers,stem,layer_path,head_extra", [
    ("resnet", 2, "resnet.embedder.", "resnet.encoder.stages.{}.", ()),
    ("convnext", 2, "convnext.embeddings.", "convnext.encoder.stages.{}.",
     ("convnext.layernorm.",)),
    ("vit", 2, "vit.embeddings.", "vit.layers.{}.", ("vit.layernorm.",)),  # transformers 5
])
def test_vision_layer_decay_and_freezing_per_parameter(tmp_path, kind, layers, stem,
                                                       layer_path, head_extra):
    net = model(build_tiny_vision_model(tmp_path, kind))
    decay = 0.5
    groups = parameter_groups(net, TrainConfig(layer_decay=decay))
    owner = {id(p): g for g in groups for p in g["params"]}
    names = [name for name, _ in net.named_parameters()]
    assert any(n.startswith(layer_path.format(layers - 1)) for n in names)
    for name, param in net.named_parameters():
        if name.startswith(stem):
            expected = decay ** (layers + 1)
        else:
            expected = next((decay ** (layers - i) for i in range(layers)
                             if name.startswith(layer_path.format(i))), 1.0)
        if name.startswith(("classifier.", *head_extra)):
            assert expected == 1.0, name
        assert owner[id(param)]["lr_scale"] == expected, name  # exact powers of 0.5
        assert owner[id(param)]["decays"] is (param.ndim >= 2), name
    parameter_groups(net, TrainConfig(freeze_embeddings=True, freeze_layers=1))
    for name, param in net.named_parameters():
        frozen = name.startswith((stem, layer_path.format(0)))
        assert param.requires_grad is not frozen, name


def test_a_relative_model_folder_resolves_to_an_absolute_path(tiny_resnet, monkeypatch):
    """Trials run in Ray's working directory: a relative `model.name` must not reach them."""
    from raytune_ft.training.model import resolve_model_path

    monkeypatch.chdir(tiny_resnet.parent)
    assert resolve_model_path(tiny_resnet.name) == str(tiny_resnet.resolve())


@pytest.mark.parametrize("policy", ["eval", "frozen", "train"])
def test_augmented_steps_accumulate_exactly_however_the_batch_is_split(tiny_resnet, images,
                                                                       policy):
    # Crops and flips are drawn per sample and step: the same in micro-batches of 16 as of 4,
    # once the loop's BatchNorm policy is in force (as run_interval puts it before training);
    # under `train` the statistics come from each micro-batch, so the gradients differ.
    from dataclasses import replace

    augmented = replace(images, train=replace(images.train, crop_scale=0.5, flip=True))
    steps = []
    for micro in (16, 4):
        hp = TrainConfig(batchnorm=policy, batch_size=16, max_micro_batch=micro,
                         max_epochs=1, eval_every_epochs=1)
        loop = FineTuneLoop(model(tiny_resnet), augmented, hp)
        train_mode(loop.model, hp)
        loop._step(loop.stream.take(0, 16))
        steps.append({n: p.grad.clone() for n, p in loop.model.named_parameters()
                      if p.grad is not None})
    whole, accumulated = steps
    assert whole.keys() == accumulated.keys()
    name = "resnet.embedder.embedder.convolution.weight"
    if policy == "train":
        assert (whole[name] - accumulated[name]).abs().max() > 1e-4
        return
    for name in whole:
        torch.testing.assert_close(whole[name], accumulated[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
