"""Parameter groups: layer-wise decay by the formula, freezing, no decay on bias/LayerNorm."""

from pathlib import Path

import pytest
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ModelError
from raytune_ft.tasks.sequence_classification import load_model
from raytune_ft.training.model import parameter_groups


def groups_by_parameter(model, groups):
    owner = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in owner, "a parameter is in two groups"
            owner[id(param)] = group
    return {name: owner.get(id(p)) for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind,layers,embeddings,layer_path", [
    ("bert", 4, ("bert.embeddings.",), "bert.encoder.layer.{}."),
    ("distilbert", 2, ("distilbert.embeddings.",), "distilbert.transformer.layer.{}."),
    ("roberta", 3, ("roberta.embeddings.",), "roberta.encoder.layer.{}."),
    # ELECTRA's projection from its 16-wide embeddings to the hidden size is embeddings
    ("electra", 2, ("electra.embeddings.", "electra.embeddings_project."),
     "electra.encoder.layer.{}."),
])
def test_layer_decay_formula(tmp_path, kind, layers, embeddings, layer_path):
    from support import build_tiny_model

    model = load_model(str(build_tiny_model(tmp_path, layers=layers, kind=kind)), ["0", "1"], 0)
    if kind == "electra":
        assert any(n.startswith("electra.embeddings_project.") for n, _ in
                   model.named_parameters())
    decay = 0.5
    owner = groups_by_parameter(model, parameter_groups(model, TrainConfig(layer_decay=decay)))
    assert all(group is not None for group in owner.values()), "a trainable parameter is left out"
    for name, group in owner.items():
        if name.startswith(embeddings):
            expected = decay ** (layers + 1)
        else:
            expected = next((decay ** (layers - i) for i in range(layers)
                             if name.startswith(layer_path.format(i))), 1.0)
        assert group["lr_scale"] == expected, name  # exact: powers of 0.5
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        assert group["decays"] is not no_decay, name
    # frozen embeddings take every embedding-depth parameter out of the optimizer
    frozen = groups_by_parameter(model, parameter_groups(model,
                                                         TrainConfig(freeze_embeddings=True)))
    for name, param in model.named_parameters():
        assert (frozen[name] is None) == name.startswith(embeddings), name
        assert param.requires_grad is not name.startswith(embeddings), name


def test_freezing_leaves_parameters_out(tiny_bert):
    model = load_model(str(tiny_bert), ["0", "1"], 0)
    hp = TrainConfig(freeze_embeddings=True, freeze_layers=1)
    owner = groups_by_parameter(model, parameter_groups(model, hp))
    for name, param in model.named_parameters():
        frozen = name.startswith(("bert.embeddings.", "bert.encoder.layer.0."))
        assert (owner[name] is None) == frozen, name
        assert param.requires_grad is not frozen
    with pytest.raises(ModelError, match="freeze_layers: 5 is above the model's 2"):
        parameter_groups(model, TrainConfig(freeze_layers=5))


def test_unknown_layout_is_an_error_naming_the_class():
    class Custom(torch.nn.Module):
        base_model_prefix = "gpt9"

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

    assert len(parameter_groups(Custom(), TrainConfig())) == 2  # no layout needed
    with pytest.raises(ModelError, match="Custom"):
        parameter_groups(Custom(), TrainConfig(layer_decay=0.9))


def test_a_node_without_the_drivers_model_folder_resolves_the_name_itself(tiny_bert, tmp_path):
    from raytune_ft.tuning.trial import node_model_path

    assert node_model_path(str(tiny_bert), str(tiny_bert)) == str(tiny_bert)
    assert node_model_path("bert-base-uncased", "bert-base-uncased") == "bert-base-uncased"
    # the packaged MiniLM under another prefix on the driver: this node has its own copy
    packaged = node_model_path(str(tmp_path / "driver-site-packages" / "minilm"),
                               "all-MiniLM-L6-v2")
    assert (Path(packaged) / "config.json").is_file()
    with pytest.raises(ModelError, match="model.name: .*does not exist"):
        node_model_path(str(tmp_path / "only-on-the-driver"), str(tmp_path / "only-on-the-driver"))


def test_pbt_trials_get_their_own_dropout_seed_the_same_in_every_run():
    from raytune_ft.tuning.trial import trial_dropout_seed

    assert trial_dropout_seed(7, False, "a1b2c_00003") == 7  # not PBT: the config's seed
    first = trial_dropout_seed(7, True, "a1b2c_00003")
    assert first == trial_dropout_seed(7, True, "ffff0_00003")  # another run's id prefix
    assert first != trial_dropout_seed(7, True, "a1b2c_00004") != 7
    assert trial_dropout_seed(7, True, "3f2a9c1d") == trial_dropout_seed(7, True, "3f2a9c1d")
