"""Where a model's embeddings, layers and head are, for layer-wise decay, freezing and LoRA.

An encoder (BERT family, vision bodies) has one stack of layers; an encoder-decoder (Marian,
BART, mBART, T5, mT5, and `EncoderDecoderModel` warm-started from two encoders) has two. A
layer's depth is its place in its own stack (1..L, L the deeper stack's count): encoder layer
l and decoder layer l share a depth and so a layer-wise decay factor. The embeddings (shared
token embeddings, positions; in a model whose output projection is tied to them, that too) are
depth 0, everything else is the head at L + 1. `freeze_layers` reaches the encoder's stack
only: a warm-started decoder's cross-attention is new, and a decoder frozen at the bottom
would never learn to read the source.

An unknown layout is an error naming the model class, never a silent fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from raytune_ft.errors import ModelError

PEFT_PREFIX = "base_model.model."  # what a peft model puts before the wrapped model's names
# base_model_prefix -> (modules at embedding depth, pattern of the encoder's layer list).
# ELECTRA projects its smaller embeddings up to the hidden size: that projection belongs to
# the embeddings, not to the task head.
LAYOUTS = {
    "bert": (("bert.embeddings",), r"bert\.encoder\.layer\.(\d+)\."),
    "roberta": (("roberta.embeddings",), r"roberta\.encoder\.layer\.(\d+)\."),
    "distilbert": (("distilbert.embeddings",), r"distilbert\.transformer\.layer\.(\d+)\."),
    "electra": (("electra.embeddings", "electra.embeddings_project"),
                r"electra\.encoder\.layer\.(\d+)\."),
    # vision: the stem is the embeddings, a stage (ResNet, ConvNeXt) or an encoder layer (ViT)
    # is a layer; the final norm and pooler go with the classifier (the head)
    "resnet": (("resnet.embedder",), r"resnet\.encoder\.stages\.(\d+)\."),
    "convnext": (("convnext.embeddings",), r"convnext\.encoder\.stages\.(\d+)\."),
    "vit": (("vit.embeddings",), r"vit\.(?:encoder\.layer|layers)\.(\d+)\."),  # 5.x: layers
}
_BART = (("model.shared", "model.encoder.embed_tokens", "model.decoder.embed_tokens",
          "model.encoder.embed_positions", "model.decoder.embed_positions",
          "model.encoder.layernorm_embedding", "model.decoder.layernorm_embedding"),
         r"model\.encoder\.layers\.(\d+)\.", r"model\.decoder\.layers\.(\d+)\.")
_T5 = (("shared", "encoder.embed_tokens", "decoder.embed_tokens"),
       r"encoder\.block\.(\d+)\.", r"decoder\.block\.(\d+)\.")
# config.model_type -> (embeddings, encoder layer pattern, decoder layer pattern)
SEQ2SEQ_LAYOUTS = {"marian": _BART, "bart": _BART, "mbart": _BART, "t5": _T5, "mt5": _T5}
SUPPORTED_LAYOUTS = ("BERT, RoBERTa, DistilBERT, MiniLM, ELECTRA, ResNet, ConvNeXt, ViT; "
                     "encoder-decoders Marian, BART, mBART, T5, mT5 and EncoderDecoderModel "
                     "of those encoders")


@dataclass(frozen=True)
class Layout:
    embeddings: tuple[str, ...]  # module paths at depth 0
    layers: tuple[str, ...]  # patterns whose group 1 is a 0-based layer index (depth - 1)
    frozen: tuple[str, ...]  # the patterns `freeze_layers` reaches (the encoder's stack)
    num_layers: int  # L: the deepest stack's layer count

    def depth(self, name: str) -> int:
        """0 for the embeddings, 1..L for a layer, L + 1 for the head."""
        name = name.removeprefix(PEFT_PREFIX)  # an adapted model's names (training.lora)
        if self.in_embeddings(name):
            return 0
        for pattern in self.layers:
            match = re.match(pattern, name)
            if match:
                return int(match.group(1)) + 1
        return self.num_layers + 1

    def in_embeddings(self, name: str) -> bool:
        return name.removeprefix(PEFT_PREFIX).startswith(tuple(e + "." for e in self.embeddings))

    def in_layers(self, name: str) -> bool:
        return any(re.match(p, name.removeprefix(PEFT_PREFIX)) for p in self.layers)

    def freezes(self, name: str, freeze_embeddings: bool, freeze_layers: int) -> bool:
        """Whether `train.freeze_embeddings` and `train.freeze_layers` freeze `name`."""
        return (freeze_embeddings and self.in_embeddings(name)) or self.frozen_by(
            name, freeze_layers)

    def frozen_by(self, name: str, freeze_layers: int) -> bool:
        """Whether `name` sits in one of the bottom `freeze_layers` encoder layers."""
        name = name.removeprefix(PEFT_PREFIX)
        for pattern in self.frozen:
            match = re.match(pattern, name)
            if match:
                return int(match.group(1)) + 1 <= freeze_layers
        return False


def encoder_layer_count(config) -> int:
    """Encoder layers (text, ViT; an encoder-decoder's encoder) or stages (ResNet,
    ConvNeXt) of a model's config: what `freeze_layers` counts."""
    if getattr(config, "model_type", "") == "encoder-decoder":
        return encoder_layer_count(config.encoder)
    for key in ("num_hidden_layers", "encoder_layers", "num_layers", "n_layers"):
        if hasattr(config, key):
            return getattr(config, key)
    return len(config.depths)


def _decoder_layer_count(config) -> int:
    if getattr(config, "model_type", "") == "encoder-decoder":
        return encoder_layer_count(config.decoder)
    for key in ("decoder_layers", "num_decoder_layers"):
        if getattr(config, key, None):
            return getattr(config, key)
    return encoder_layer_count(config)


def _unknown(model: torch.nn.Module, field: str) -> ModelError:
    return ModelError(f"{field}: layer layout of {type(model).__name__} is not supported; "
                      f"supported: {SUPPORTED_LAYOUTS}")


def _inner(layout: tuple, prefix: str, inner_prefix: str) -> tuple[tuple[str, ...], str]:
    """An encoder layout with its base-model prefix replaced by the path inside an
    EncoderDecoderModel (`encoder.` for the bare encoder, `decoder.bert.` for the decoder)."""
    embeddings, pattern = layout
    return (tuple(inner_prefix + e.removeprefix(prefix + ".") for e in embeddings),
            re.escape(inner_prefix) + pattern.removeprefix(re.escape(prefix) + r"\."))


def model_layout(model: torch.nn.Module, field: str = "train.layer_decay/freeze") -> Layout:
    """The model's layout; ModelError naming `field` and the model class when unknown."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        L = max(encoder_layer_count(config), _decoder_layer_count(config))
        if model_type in SEQ2SEQ_LAYOUTS:
            embeddings, encoder, decoder = SEQ2SEQ_LAYOUTS[model_type]
            return Layout(embeddings, (encoder, decoder), (encoder,), L)
        if model_type == "encoder-decoder":
            parts = []
            for side, inner in (("encoder", "encoder."), ("decoder", "decoder.")):
                stack = getattr(model, side)
                prefix = stack.base_model_prefix
                if prefix not in LAYOUTS:
                    raise _unknown(stack, field)
                # the encoder is a bare model; the decoder a head model holding one
                inner = inner if side == "encoder" else f"{inner}{prefix}."
                parts.append(_inner(LAYOUTS[prefix], prefix, inner))
            (enc_embeddings, encoder), (dec_embeddings, decoder) = parts
            return Layout(enc_embeddings + dec_embeddings, (encoder, decoder), (encoder,), L)
        raise _unknown(model, field)
    layout = LAYOUTS.get(getattr(model, "base_model_prefix", ""))
    if layout is None or config is None:
        raise _unknown(model, field)
    embeddings, pattern = layout
    return Layout(embeddings, (pattern,), (pattern,), encoder_layer_count(config))
