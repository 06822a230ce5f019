"""Encoder-decoder layouts with exact numbers: layer-wise decay by depth in each stack,
freezing of the encoder's bottom layers only, LoRA on both stacks with the tied LM head
frozen; the hub models' configs (t5-small, opus-mt-de-en; no hub here, so their configs on
the meta device); and an encoder-decoder warm-started from two encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ModelError
from raytune_ft.training.layouts import model_layout
from raytune_ft.training.model import load_pretrained, parameter_groups


def _groups(model, **hp) -> dict[str, float]:
    """Parameter name -> its group's lr scale (frozen ones absent)."""
    groups = parameter_groups(model, TrainConfig(**hp))
    ids = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    return {name: ids[id(p)] for name, p in model.named_parameters() if id(p) in ids}


def t5_small_config():
    from transformers import T5Config

    return T5Config()  # its defaults are t5-small's: 6 + 6 blocks, d_model 512, 32,128 pieces


def opus_mt_de_en_config():
    """Helsinki-NLP/opus-mt-de-en's config.json, as published."""
    from transformers import MarianConfig

    return MarianConfig(vocab_size=58101, decoder_vocab_size=58101, d_model=512,
                        encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                        activation_function="swish", scale_embedding=True, pad_token_id=58100,
                        decoder_start_token_id=58100, eos_token_id=0, max_position_embeddings=512,
                        static_position_embeddings=True, share_encoder_decoder_embeddings=True)


def test_marian_decay_by_depth_in_both_stacks_and_freezing_the_encoder(tiny_marian):
    from transformers import AutoConfig, MarianMTModel

    config = AutoConfig.from_pretrained(tiny_marian)
    config.encoder_layers = config.decoder_layers = 3
    torch.manual_seed(0)
    model = MarianMTModel(config)
    scales = _groups(model, layer_decay=0.5, freeze_layers=1)
    assert scales["model.shared.weight"] == 0.5 ** 4  # embeddings, tied to the LM head
    assert "model.encoder.layers.0.fc1.weight" not in scales  # frozen: encoder layer 1
    assert scales["model.decoder.layers.0.fc1.weight"] == 0.5 ** 3  # decoder layer 1 trains
    assert scales["model.encoder.layers.1.fc1.weight"] == 0.5 ** 2
    assert scales["model.decoder.layers.2.encoder_attn.q_proj.weight"] == 0.5 ** 1
    layout = model_layout(model)
    assert layout.num_layers == 3 and layout.depth("lm_head.weight") == 4


@pytest.mark.parametrize("hp", [{}, {"freeze_layers": 1}, {"batchnorm": "train"}],
                         ids=["full", "freeze_layers", "batchnorm"])
def test_parameters_the_model_keeps_fixed_never_train(tiny_marian, hp):
    """Marian's sinusoidal position tables are built with requires_grad off: the model never
    trains them. Building the optimizer groups (whatever freezing a trial asks for) leaves
    them off and out of every group, and a training step leaves them bit for bit as built."""
    from raytune_ft.tasks import get_task
    from raytune_ft.training.loop import FineTuneLoop

    model = load_pretrained("AutoModelForSeq2SeqLM", str(tiny_marian), 0)
    positions = {name: p.detach().clone() for name, p in model.named_parameters()
                 if "embed_positions" in name}
    assert len(positions) == 2 and not any(
        p.requires_grad for name, p in model.named_parameters() if name in positions)
    task = get_task("seq2seq")
    bundle = task.load_data(multi30k_data(), str(tiny_marian), 16)
    loop = FineTuneLoop(model, bundle, TrainConfig(batch_size=8, max_epochs=1, **hp),
                        "eval_bleu", "max", task=task)
    grouped = {id(p) for group in loop.optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        if name in positions:
            assert not param.requires_grad and id(param) not in grouped, name
    assert any(p.requires_grad for n, p in model.named_parameters() if "decoder.layers" in n)
    loop._step(np.arange(8))
    for name, param in model.named_parameters():
        if name in positions:
            assert torch.equal(param, positions[name]), name


def multi30k_data():
    from support import MULTI30K

    from raytune_ft.schema import data_settings

    return data_settings(kind="seq2seq", train_file=str(MULTI30K / "train"),
                         eval_file=str(MULTI30K / "val"), source_lang="de", target_lang="en",
                         max_train_samples=16, max_eval_samples=4, max_target_length=12)


def test_hub_configs_have_known_layouts_and_lora_targets():
    from transformers import MarianMTModel, T5ForConditionalGeneration

    from raytune_ft.training.lora import head_modules, target_modules

    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(t5_small_config())
        marian = MarianMTModel(opus_mt_de_en_config())
    for model, stacks, linear_per_pair in ((t5, 6, 4 + 2 + 4 + 4 + 2), (marian, 6, 6 + 10)):
        layout = model_layout(model)
        assert layout.num_layers == stacks
        names = target_modules(model, TrainConfig(lora_r=8))
        assert len(names) == stacks * linear_per_pair  # every projection of both stacks
        assert not any(name.endswith("lm_head") for name in names)
        assert any("decoder." in name for name in names)
        assert len(target_modules(model, TrainConfig(lora_r=8, freeze_layers=2))) == \
            len(names) - 2 * (6 if model is t5 else 6)  # no adapters in encoder layers 1-2
    assert head_modules(marian) == []  # the tied LM head stays frozen with the embeddings
    assert head_modules(t5) == ["decoder.final_layer_norm", "encoder.final_layer_norm"]


def test_unknown_encoder_decoder_is_an_error_naming_the_class():
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    with torch.device("meta"):
        model = PegasusForConditionalGeneration(PegasusConfig(
            vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
            decoder_ffn_dim=16))
    with pytest.raises(ModelError, match="layout of PegasusForConditionalGeneration is not "
                                         "supported"):
        parameter_groups(model, TrainConfig(layer_decay=0.8))
    assert len(parameter_groups(model, TrainConfig())) == 2  # without decay: one depth


def test_warm_started_encoder_decoder(tmp_path, monkeypatch, tiny_bert):
    """model.decoder_name: BERT + BERT (Rothe et al. 2020) into one folder, built once; the
    encoder's and the decoder's layers decay by depth, the cross-attention is new."""
    from raytune_ft.training.encoder_decoder import warm_start
    from raytune_ft.training.lora import apply_lora, head_modules

    monkeypatch.setenv("RAYTUNE_FT_CACHE", str(tmp_path))
    folder = warm_start(str(tiny_bert), str(tiny_bert))
    assert warm_start(str(tiny_bert), str(tiny_bert)) == folder  # cached
    model = load_pretrained("AutoModelForSeq2SeqLM", folder, 0)
    assert type(model).__name__ == "EncoderDecoderModel"
    assert model.config.decoder_start_token_id == 101 and model.config.pad_token_id == 0
    assert model.config.eos_token_id == 102
    from safetensors.torch import load_file  # both stacks start from the checkpoint

    bert = load_file(tiny_bert / "model.safetensors")
    query = "encoder.layer.1.attention.self.query.weight"
    torch.testing.assert_close(model.encoder.state_dict()[query], bert[query])
    torch.testing.assert_close(model.decoder.bert.state_dict()[query], bert[query])
    scales = _groups(model, layer_decay=0.5, freeze_layers=1)
    assert scales["encoder.embeddings.word_embeddings.weight"] == 0.5 ** 3
    assert "encoder.encoder.layer.0.attention.self.query.weight" not in scales
    assert scales["decoder.bert.encoder.layer.0.crossattention.self.query.weight"] == 0.5 ** 2
    assert scales["decoder.bert.encoder.layer.1.attention.self.query.weight"] == 0.5
    assert scales["decoder.cls.predictions.transform.dense.weight"] == 1.0  # the head
    assert head_modules(model) == ["decoder.cls.predictions", "encoder.pooler.dense"]
    adapted = apply_lora(model, TrainConfig(lora_r=2))
    out = adapted.generate(input_ids=torch.tensor([[101, 2023, 102]]), max_new_tokens=3)
    assert out[0, 0] == 101 and out.shape[1] <= 4
