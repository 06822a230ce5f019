"""LoRA adapters (peft) on the model any task builds: the base frozen, the task head trained.

`apply_lora(model, hp)` is the one place adapters are added; with `train.lora_r: 0` it returns
the model unchanged (full fine-tuning). Otherwise peft wraps it:

- targets: `train.lora_targets` is `all-linear` (as in peft: every pretrained `nn.Linear`
  but the embeddings', the task head's and an output projection's; for BERT-family models
  query, key, value and the dense layers of the attention output and the feed-forward block
  in every layer, and the pooler's dense layer; for an encoder-decoder every projection of
  both stacks, cross-attention included) or comma-separated module names (the last part of a
  module's path, e.g. `query,value`, `q_proj,v_proj`). No adapter goes into the bottom
  `train.freeze_layers` encoder layers: with LoRA `freeze_layers: k` means "no adapters in
  encoder layers 1..k" (the embeddings are frozen anyway, so `freeze_embeddings` changes
  nothing).
- the head: the task head and the parameters the pretrained folder did not hold
  (`load_pretrained` records them), else every parameter outside the embeddings and the
  layers, trains in full as peft's `modules_to_save` (a translation model's LM head tied
  to its embeddings is no such module: it stays frozen); a pretrained pooler is adapted
  like the encoder's layers (its weights are the pretrained ones, which a
  sentence-embedding model such as MiniLM never trained).
- the update is `(lora_alpha / lora_r) x B A`; A starts from `hp.seed`, B at zero, so a trial
  starts from exactly the pretrained function.

Checkpoints hold `trained_state(model)` only (adapters and head); the frozen base comes from
the model folder each time a trial builds its model, and is never written.
"""

from __future__ import annotations

import numpy as np
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ModelError
from raytune_ft.training.layouts import model_layout

ALL_LINEAR = "all-linear"


def _layout(model: torch.nn.Module):
    return model_layout(model, "train.lora_r")  # unknown: an error naming the model class


def _output_projection(model: torch.nn.Module) -> str | None:
    """The module path of a generating model's output projection (its LM head), which,
    like the embeddings it is often tied to, gets no adapter."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None:
        return None
    return next((name for name, module in model.named_modules() if module is output), None)


def target_modules(model: torch.nn.Module, hp: TrainConfig) -> list[str]:
    """Full names of the linear layers that get adapters (see the module docstring): inside
    the layers (an encoder-decoder: both stacks) not frozen by `freeze_layers`, and the
    pretrained ones outside them (BERT's pooler), never the task head, which trains in
    full, nor an output projection."""
    layout = _layout(model)
    wanted = None if hp.lora_targets == ALL_LINEAR else set(hp.lora_targets.split(","))
    head = tuple(name + "." for name in head_modules(model))
    output = _output_projection(model)
    found, names_there = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or (name + ".").startswith(head) or \
                name == output or layout.in_embeddings(name + "."):
            continue
        leaf = name.rsplit(".", 1)[-1]
        names_there.add(leaf)
        if layout.frozen_by(name + ".", hp.freeze_layers):
            continue
        if wanted is None or leaf in wanted:
            found.append(name)
    if not names_there:  # a convolutional network (ResNet): nothing LoRA can adapt
        raise ModelError(f"train.lora_r: {type(model).__name__} has no linear layer outside "
                         "its embeddings and task head (LoRA adapts linear layers, not "
                         "convolutions); fine-tune it in full (train.lora_r: 0)")
    missing = sorted(wanted - names_there) if wanted else []
    if missing or not found:
        why = f"{', '.join(missing)} matches no linear layer" if missing else \
            "no linear layer is left above train.freeze_layers"
        raise ModelError(f"train.lora_targets: {hp.lora_targets!r}: {why} in the layers of "
                         f"{type(model).__name__}; names there: "
                         f"{', '.join(sorted(names_there)) or 'none'} (or {ALL_LINEAR})")
    return found


def head_modules(model: torch.nn.Module) -> list[str]:
    """Modules trained in full: those holding the task head and the parameters the folder
    did not hold (`load_pretrained` records them), else every module with parameters
    outside the embeddings and layers. A generating model may have none: its head is the
    output projection tied to the embeddings (Marian, BART), which stays frozen with them."""
    layout = _layout(model)
    fresh = getattr(model, "raytune_ft_head", None)
    if not fresh:  # not loaded by load_pretrained, or its folder already held the head
        fresh = [name for name, _ in model.named_parameters()
                 if not layout.in_embeddings(name) and not layout.in_layers(name)]
    modules = sorted({name.rsplit(".", 1)[0] for name in fresh if "." in name})
    # a module inside another listed one trains with it (peft would wrap it twice)
    modules = [m for m in modules if not any(m.startswith(o + ".") for o in modules)]
    generates = bool(getattr(model.config, "is_encoder_decoder", False))
    if not modules and not generates:
        raise ModelError(f"train.lora_r: {type(model).__name__} has no task head to train "
                         "beside the adapters")
    return modules


def apply_lora(model: torch.nn.Module, hp: TrainConfig) -> torch.nn.Module:
    """The model with LoRA adapters per `hp` (a peft model), or `model` when lora_r is 0."""
    if hp.lora_r == 0:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("train.lora_r: LoRA needs peft: pip install 'raytune-ft[lora]'"
                         ) from None
    config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                        target_modules=target_modules(model, hp),
                        modules_to_save=head_modules(model) or None)
    # A's initialisation draws from its own stream, not the one the head was drawn from.
    torch.manual_seed(int(np.random.SeedSequence([hp.seed, 1]).generate_state(1)[0]))
    return get_peft_model(model, config)


def adapter_settings(model: torch.nn.Module) -> dict:
    """r, alpha, the adapted module names and the fully trained ones, as peft holds them."""
    config = model.peft_config["default"]
    # the adapted modules themselves: peft may store a long target list as shorter suffixes
    adapted = [name.removeprefix("base_model.model.") for name, module in model.named_modules()
               if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
               and len(module.lora_A)]
    return {"lora_r": config.r, "lora_alpha": config.lora_alpha,
            "target_modules": sorted(adapted),
            "modules_to_save": sorted(config.modules_to_save or [])}


def put_in_force(model: torch.nn.Module, hp: TrainConfig) -> None:
    """The trial's settings on an adapted model: the same shape (else refuse), and its own
    `lora_dropout` (PBT may change it; peft builds Identity for 0, so modules are swapped)."""
    config = model.peft_config["default"]
    own = {"lora_r": config.r, "lora_alpha": config.lora_alpha}
    for key, value in own.items():
        if getattr(hp, key) != value:
            raise ModelError(f"train.{key} cannot change inside a running trial (the adapters "
                             f"were built with {value}, the trial asks for {getattr(hp, key)})")
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in dropouts:
                dropouts[name] = (torch.nn.Dropout(p=hp.lora_dropout) if hp.lora_dropout > 0
                                  else torch.nn.Identity())


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA checkpoint holds: every parameter that trains (adapters and head)."""
    return {name: param.detach().contiguous() for name, param in model.named_parameters()
            if param.requires_grad}


def load_trained_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]
                       ) -> tuple[list[str], list[str]]:
    """Copy a checkpoint's trained parameters into `model`; returns (missing, unexpected)."""
    params = dict(model.named_parameters())
    trained = {name for name, param in params.items() if param.requires_grad}
    missing, unexpected = sorted(trained - set(tensors)), sorted(set(tensors) - trained)
    if missing or unexpected:
        return missing, unexpected
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                return [f"{name} (shape {tuple(value.shape)} vs {tuple(params[name].shape)})"], []
            params[name].copy_(value)
    return [], []


def check_experiment(task, model_path: str, label_names: list[str], train: TrainConfig,
                     space: dict) -> list[tuple[str, str]]:
    """Before any trial: every targets and freeze_layers value the experiment can give
    adapts at least one module of this model (else ModelError, one line). Loads the model
    once, only when some trial uses LoRA; returns the run header's line about it."""
    def values(key: str) -> list:
        return list(space[key].values) if key in space else [getattr(train, key)]

    ranks = values("lora_r")
    if not any(ranks):
        return []
    model = task.load_model(model_path, label_names, seed=0)
    head = head_modules(model)
    adapted = {}
    for targets in values("lora_targets"):
        for freeze in values("freeze_layers"):
            # model_validate, not model_copy: the targets are normalised as a trial's are
            names = target_modules(model, type(train).model_validate(
                {**train.model_dump(), "lora_targets": targets, "freeze_layers": freeze}))
            adapted[targets] = len(names)
    shown = ", ".join(f"{targets} ({count} linear layers)" for targets, count in adapted.items())
    rank_text = "/".join(str(r) for r in ranks) + (" (0: full fine-tuning)" if 0 in ranks else "")
    return [("lora", f"rank {rank_text} on {shown}; trained in full: {', '.join(head)}; "
                     "the base stays frozen and out of checkpoints")]
