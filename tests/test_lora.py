"""LoRA (training/lora.py) with numbers: what trains, what a checkpoint holds, restore and a
PBT-style clone bit for bit, layer-wise decay on adapters, lora_dropout put in force."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raytune_ft.config import DataConfig, TrainConfig
from raytune_ft.errors import ModelError
from raytune_ft.tasks.sequence_classification import build_bundle, load_model
from raytune_ft.training.loop import CheckpointError, FineTuneLoop
from raytune_ft.training.lora import apply_lora, is_lora, target_modules, trained_state
from raytune_ft.training.model import parameter_groups

pytest.importorskip("peft")

LORA = dict(lora_r=4, lora_alpha=8.0)
ADAPTED = ["query", "key", "value", "dense"]  # the BERT leaf names "all-linear" adapts


@pytest.fixture(scope="module")
def bundle(glue_dir, tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    cfg = DataConfig(task="sst2", path=str(glue_dir), max_train_samples=160,
                     max_eval_samples=64)
    return build_bundle(cfg, tokenizer, max_length=48)


def settings(**extra) -> TrainConfig:
    return TrainConfig(**{"max_epochs": 1.0, "eval_every_epochs": 0.5, "learning_rate": 1e-3,
                          "batch_size": 16, "max_micro_batch": 16, **LORA, **extra})


def make_loop(tiny_bert, bundle, hp=None, dropout_seed=None):
    hp = hp or settings()
    model = apply_lora(load_model(str(tiny_bert), bundle.label_names, seed=hp.seed), hp)
    return FineTuneLoop(model, bundle, hp, dropout_seed=dropout_seed)


def test_all_linear_adapts_the_encoder_layers_and_trains_the_head_in_full(tiny_bert, bundle):
    loop = make_loop(tiny_bert, bundle)
    trained = {n for n, p in loop.model.named_parameters() if p.requires_grad}
    # 2 layers x 6 linear layers x (A, B), the pooler's (A, B), the fresh classifier
    assert len(trained) == 2 * 6 * 2 + 2 + 2
    assert "base_model.model.bert.pooler.dense.lora_A.default.weight" in trained
    assert {n.split(".")[-4] for n in trained if "lora_" in n} == set(ADAPTED)
    assert {n for n in trained if "lora_" not in n} == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias"}
    in_optimizer = {id(p) for g in loop.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in loop.model.named_parameters() if n in trained}
    # B starts at zero: the adapted model computes exactly the base's function
    base = load_model(str(tiny_bert), bundle.label_names, seed=0).eval()
    batch = {k: v for k, v in loop.task.collate(bundle, bundle.eval, np.arange(8)).items()
             if k != "labels"}
    loop.model.eval()
    with torch.no_grad():
        assert torch.equal(base(**batch).logits, loop.model(**batch).logits)


def test_named_targets_and_freeze_layers_choose_the_adapted_modules(tiny_bert, bundle):
    model = load_model(str(tiny_bert), bundle.label_names, seed=0)
    assert target_modules(model, settings(lora_targets="query,value")) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    # with LoRA, freeze_layers: k keeps adapters out of the bottom k layers
    assert target_modules(model, settings(lora_targets="query", freeze_layers=1)) == [
        "bert.encoder.layer.1.attention.self.query"]
    with pytest.raises(ModelError, match=r"train.lora_targets: 'qkv': qkv matches no linear "
                       r"layer .* names there: dense, key, query, value \(or all-linear\)"):
        target_modules(model, settings(lora_targets="qkv"))
    with pytest.raises(ModelError, match="no linear layer is left above train.freeze_layers"):
        target_modules(model, settings(lora_targets="query", freeze_layers=2))
    # all-linear: the encoder layers' 12 and the pretrained pooler, never the classifier
    names = target_modules(model, settings())
    assert len(names) == 13 and names[-1] == "bert.pooler.dense"


def test_a_model_without_linear_layers_is_refused_for_that_reason(tiny_resnet):
    """A ResNet's encoder is convolutions only: the refusal says so, whatever freeze_layers."""
    from raytune_ft.tasks import get_task

    model = get_task("image_classification").load_model(str(tiny_resnet), ["a", "b"], seed=0)
    for freeze in (0, 1):
        with pytest.raises(ModelError) as error:
            target_modules(model, settings(freeze_layers=freeze))
        assert str(error.value) == (
            "train.lora_r: ResNetForImageClassification has no linear layer outside its "
            "embeddings and task head (LoRA adapts linear layers, not convolutions); "
            "fine-tune it in full (train.lora_r: 0)")


def test_layer_decay_scales_adapters_by_the_depth_of_their_layer(tiny_bert, bundle):
    hp = settings(layer_decay=0.5)
    model = apply_lora(load_model(str(tiny_bert), bundle.label_names, seed=0), hp)
    scale = {id(p): g["lr_scale"] for g in parameter_groups(model, hp) for p in g["params"]}
    named = dict(model.named_parameters())
    # L = 2: layer 0 at 0.5^2, layer 1 at 0.5^1, the head at 1
    assert scale[id(named["base_model.model.bert.encoder.layer.0.attention.self.query"
                         ".lora_A.default.weight"])] == 0.25
    assert scale[id(named["base_model.model.bert.encoder.layer.1.output.dense"
                         ".lora_B.default.weight"])] == 0.5
    assert scale[id(named["base_model.model.classifier.modules_to_save.default.weight"])] == 1.0
    assert scale[id(named["base_model.model.bert.pooler.dense.lora_A.default.weight"])] == 1.0


def test_checkpoint_holds_only_what_trains_and_restore_continues_bit_for_bit(
        tiny_bert, bundle, tmp_path):
    hp = settings(lora_dropout=0.1, warmup_ratio=0.2, batch_size=24)
    straight = make_loop(tiny_bert, bundle, hp)
    first = straight.run_interval()
    straight.run_interval()
    interrupted = make_loop(tiny_bert, bundle, hp)
    interrupted.run_interval()
    interrupted.save(tmp_path / "ckpt")
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(saved) == set(trained_state(interrupted.model))
    assert sum(v.numel() for v in saved.values()) == 2 * (4 * (4 * 32 * 2) + 4 * (32 + 64) * 2) \
        + 4 * 64 + 2 * 32 + 2  # q, k, v, attention-out: r x (32 + 32) each; the FFN pair;
    # the pooler; the head
    restored = make_loop(tiny_bert, bundle, hp)
    restored.load(tmp_path / "ckpt")
    last = restored.run_interval()
    assert last["samples_seen"] == 160 and first["eval_loss"] > 0
    straight_state = straight.model.state_dict()
    for name, value in restored.model.state_dict().items():
        assert torch.equal(value, straight_state[name]), name
    a, b = straight.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    for key in a:
        assert torch.equal(a[key]["exp_avg_sq"], b[key]["exp_avg_sq"])


def test_a_pbt_clone_continues_exactly_with_its_new_lr_and_lora_dropout(tiny_bert, bundle,
                                                                      tmp_path):
    donor = make_loop(tiny_bert, bundle, settings(lora_dropout=0.0))
    donor.run_interval()
    donor.save(tmp_path / "donor")
    # the clone: a new trial with the donor's checkpoint and mutated settings
    mutated = settings(lora_dropout=0.2, learning_rate=8e-4, weight_decay=0.05)
    clone = make_loop(tiny_bert, bundle, mutated, dropout_seed=7)
    clone.load(tmp_path / "donor")
    reference = make_loop(tiny_bert, bundle, settings(lora_dropout=0.0))
    reference.load(tmp_path / "donor")
    reference.apply_hyperparameters(mutated)  # the same settings put in force in place
    reference.dropout_seed = 7
    assert [m.p for m in clone.model.modules() if isinstance(m, torch.nn.Dropout)
            and m.p == 0.2] and clone.current_lr() == reference.current_lr()
    clone.run_interval()
    reference.run_interval()
    for name, value in clone.model.state_dict().items():
        assert torch.equal(value, reference.model.state_dict()[name]), name
    # a clone with another rank cannot take the donor's adapters
    other = make_loop(tiny_bert, bundle, settings(lora_r=2))
    with pytest.raises(CheckpointError, match="does not match the model"):
        other.load(tmp_path / "donor")
    with pytest.raises(ModelError, match="train.lora_alpha cannot change inside a running"):
        clone.apply_hyperparameters(settings(lora_alpha=4.0))


def test_full_fine_tuning_is_untouched(tiny_bert, bundle, tmp_path):
    hp = settings(lora_r=0)
    model = apply_lora(load_model(str(tiny_bert), bundle.label_names, seed=0), hp)
    assert not is_lora(model)
    loop = FineTuneLoop(model, bundle, hp)
    loop.save(tmp_path / "ckpt")  # every weight, as before LoRA existed
    assert set(load_file(tmp_path / "ckpt" / "model.safetensors")) == set(model.state_dict())
