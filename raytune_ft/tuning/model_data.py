"""Data for a search over `model.name`, `model.max_length` and the `data.` keys a task's
encoding depends on (`Task.tokenization_fields`, e.g. data.doc_stride): one tokenization per
distinct (tokenizer, max_length, data values), made once in the driver and shared by every
trial that needs it.

Two model names whose tokenizer files are the same (a fingerprint of the files, not the name)
share one tokenization. Every tokenization reads the same examples (the same subset) under
the same label names, else the search is refused; the samples they give may differ in number
(question answering: windows), and each number has its budget in the trial plan. Without
such a key under `search:` none of this runs: `runner.prepare` tokenizes once, as it always
did.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.config import DATA_SEARCH_PREFIX, DataSettings
from raytune_ft.errors import ConfigError, ModelError
from raytune_ft.schema import (
    ExperimentConfig,
    data_options,
    model_options,
    trial_data,
    trial_model,
)
from raytune_ft.tasks import DataBundle, Task, example_count

log = logging.getLogger(__name__)

# Files that decide how text becomes token ids (tokenizers' and image processors').
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model", "added_tokens.json",
                   "special_tokens_map.json", "tokenizer_config.json",
                   "preprocessor_config.json")
# tokenizer_config.json keys that name or bound the files rather than change the ids
# (max_length is the experiment's, passed at tokenization).
IGNORED_CONFIG_KEYS = ("name_or_path", "model_max_length", "tokenizer_file")


def tokenizer_fingerprint(model_path: str) -> str:
    """A short hash of the model's tokenizer files; a hub id not on disk is its own name."""
    folder = Path(model_path)
    if not folder.is_dir():
        return f"hub:{model_path}"
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        found = True
        data = path.read_bytes()
        if name == "tokenizer_config.json":
            try:
                values = {k: v for k, v in json.loads(data).items()
                          if k not in IGNORED_CONFIG_KEYS}
                data = json.dumps(values, sort_keys=True).encode()
            except (ValueError, AttributeError):
                pass  # hashed as written
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:12] if found else f"path:{folder.resolve()}"


@dataclass
class ModelData:
    """The models a search may train and their tokenized data.

    `bundles` is keyed by (tokenizer fingerprint, max_length, searched data values); `refs`
    holds the same keys with Ray object references once the bundles are in the object store
    (`to_object_store`), and then `bundles` is emptied so the trials do not carry them.
    """

    paths: dict[str, str]  # model.name -> resolved path (on the driver)
    tokenizers: dict[str, str]  # model.name -> tokenizer fingerprint
    bundles: dict[tuple, DataBundle] = field(default_factory=dict)
    refs: dict[tuple, Any] = field(default_factory=dict)
    data_keys: tuple[str, ...] = ()  # the searched `data.` keys, in the order written

    @classmethod
    def single(cls, name: str, path: str, max_length: int, bundle: DataBundle) -> ModelData:
        """The one tokenization of an experiment that searches no model or data key."""
        return cls({name: path}, {name: "fixed"}, bundles={("fixed", max_length, ()): bundle})

    def key(self, name: str, max_length: int, data: DataSettings | None = None) -> tuple:
        values = tuple(getattr(data, k.removeprefix(DATA_SEARCH_PREFIX))
                       for k in self.data_keys) if data is not None else ()
        return self.tokenizers[name], max_length, values

    @property
    def tokenizations(self) -> int:
        return len(self.bundles) or len(self.refs)

    def for_trial(self, experiment: ExperimentConfig, sampled: dict) -> tuple[str, Any]:
        """(model path, bundle or object reference) of the trial with config `sampled`."""
        model = trial_model(experiment, sampled)
        key = self.key(model.name, model.max_length, trial_data(experiment, sampled))
        return self.paths[model.name], (self.refs or self.bundles)[key]

    def to_object_store(self) -> ModelData:
        """A copy holding one object reference per tokenization instead of the bundles."""
        import ray

        return ModelData(dict(self.paths), dict(self.tokenizers),
                         refs={key: ray.put(bundle) for key, bundle in self.bundles.items()},
                         data_keys=self.data_keys)

    def warnings(self, task: Task, data: DataSettings) -> list[str]:
        """The task's warnings about every tokenization (words cut at one max_length are not
        cut at another): one that all share is said once, the others name their length
        (and their models, where the search has several tokenizers)."""
        said = {key: task.warnings(bundle, data) for key, bundle in self.bundles.items()}
        shared = set.intersection(*(set(lines) for lines in said.values())) if said else set()
        out = [line for line in next(iter(said.values()), []) if line in shared]
        for key, lines in said.items():
            out += [f"{self._which(key)}: {line}" for line in lines if line not in shared]
        return out

    def about_data(self, task: Task) -> list[tuple[str, str]]:
        """The task's header lines about the data of every tokenization: a line all share is
        said once; one that differs (eval sentences read in windows at one max_length, not
        at another) gives each tokenization's text after its length."""
        said = {key: dict(task.describe(bundle)) for key, bundle in self.bundles.items()}
        out = []
        for name in dict.fromkeys(name for lines in said.values() for name in lines):
            texts = {key: lines[name] for key, lines in said.items() if name in lines}
            if len(texts) == len(said) and len(set(texts.values())) == 1:
                out.append((name, next(iter(texts.values()))))
            else:
                out.append((name, "; ".join(f"{self._which(key)}: {text}"
                                            for key, text in texts.items())))
        return out

    def _which(self, key: tuple) -> str:
        """A tokenization in the header: its length and searched data values (and its
        models, where the search has several tokenizers)."""
        fingerprint, length, values = key
        text = f"max_length {length}" + "".join(
            f", {name} {value}" for name, value in zip(self.data_keys, values))
        if len(set(self.tokenizers.values())) == 1:
            return text
        names = [name for name, print_ in self.tokenizers.items() if print_ == fingerprint]
        return f"{text} ({', '.join(names)})"

    def describe(self) -> tuple[str, str]:
        """The run header's line: models, lengths, data values and how many tokenizations
        were made."""
        groups: dict[str, list[str]] = {}
        for name, fingerprint in self.tokenizers.items():
            groups.setdefault(fingerprint, []).append(name)
        lengths = sorted({length for _, length, _ in self.bundles})
        data = "".join(f", {key} {list(dict.fromkeys(v[i] for *_, v in self.bundles))}"
                       for i, key in enumerate(self.data_keys))
        shared = "; ".join(f"tokenizer {i + 1}: {', '.join(names)}"
                           for i, names in enumerate(groups.values()))
        models = (f"{len(self.paths)} searched" if len(self.paths) > 1
                  else next(iter(self.paths)))
        return ("models", f"{models}, max_length {lengths}{data}: "
                          f"{self.tokenizations} tokenizations ({shared})")


def resolve_models(config: ExperimentConfig) -> dict[str, str]:
    """Every searched model name's path, each checked against every searched max_length."""
    from raytune_ft.training.model import max_positions, resolve_model_path

    names, lengths = model_options(config)
    where = "search.model.max_length" if "model.max_length" in config.search else \
        "model.max_length"
    paths = {}
    for name in names:
        try:
            path = resolve_model_path(name)
        except ModelError as error:  # name the searched key, not the fixed field
            if "model.name" not in config.search:
                raise
            raise ModelError(f"search.{error}") from None
        limit = max_positions(path)
        too_long = [length for length in lengths if limit is not None and length > limit]
        if too_long:
            raise ConfigError(f"{where}: {too_long[0]} is above the position limit {limit} "
                              f"of model {name}; allowed: <= {limit}")
        paths[name] = path
    return paths


def tokenize_models(config: ExperimentConfig, task: Task, paths: dict[str, str]) -> ModelData:
    """One `task.load_data` per distinct (tokenizer, max_length, data values); label names
    and examples must agree."""
    _, lengths = model_options(config)
    data = ModelData(paths, {name: tokenizer_fingerprint(path) for name, path in paths.items()},
                     data_keys=tuple(k for k in config.search if k.startswith(DATA_SEARCH_PREFIX)))
    first_path = {}
    for name, fingerprint in data.tokenizers.items():
        first_path.setdefault(fingerprint, (name, paths[name]))
    for name, path in first_path.values():
        for length in lengths:
            for settings in data_options(config.data, config.space()):
                key = data.key(name, length, settings)
                log.info("tokenizing for %s at max_length %d %s", name, length, key[2])
                try:
                    data.bundles[key] = task.load_data(settings, path, length)
                except ConfigError as error:  # a searched length: name the searched key
                    if "model.max_length" not in config.search or \
                            not str(error).startswith("model.max_length:"):
                        raise
                    raise ConfigError(f"search.{error}") from None
    _check_same_examples(data, first_path)
    return data


def _check_same_examples(data: ModelData, first_path: dict[str, tuple[str, str]]) -> None:
    """Every tokenization holds the same examples under the same labels: the plan (n_train)
    and the task head are shared by every trial."""
    (key, reference), *others = data.bundles.items()
    name_of = {fingerprint: name for fingerprint, (name, _) in first_path.items()}
    for other_key, bundle in others:
        if bundle.label_names != reference.label_names:
            raise ConfigError(f"search.model.name: model {name_of[other_key[0]]} reads the "
                              f"labels {bundle.label_names}, but model {name_of[key[0]]} "
                              f"reads {reference.label_names}; every searched model must "
                              "read the same labels")
        sizes = (example_count(bundle.train), example_count(bundle.eval))
        expected = (example_count(reference.train), example_count(reference.eval))
        if sizes != expected:
            raise ConfigError(f"search.model.name: model {name_of[other_key[0]]} kept "
                              f"{sizes[0]} train / {sizes[1]} eval examples, model "
                              f"{name_of[key[0]]} {expected[0]} / {expected[1]}; every "
                              "tokenization must keep the same examples")
