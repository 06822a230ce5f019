"""model.name and model.max_length in the search space, without Ray: validation, the trial's
model (`config.trial_model`), tokenizer fingerprints and one tokenization per distinct
(tokenizer, max_length)."""

from __future__ import annotations

import json

import pytest
from support import REPO, build_model_family

from raytune_ft.errors import ConfigError
from raytune_ft.schema import data_options, trial_data, trial_model, validate_config
from raytune_ft.tasks import task_for
from raytune_ft.tuning.model_data import resolve_models, tokenize_models, tokenizer_fingerprint


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_model_family(tmp_path_factory.mktemp("family"))


def raw(family, glue_dir, **search):
    return {"name": "m", "model": {"name": str(family["two"]), "max_length": 64},
            "data": {"task": "sst2", "path": str(glue_dir), "max_train_samples": 64,
                     "max_eval_samples": 32},
            "search": {"model.name": {"choice": [str(p) for p in family.values()]},
                       "model.max_length": {"choice": [8, 32]}, **search}}


def test_trial_model_takes_the_searched_values_over_the_fixed_ones(family, glue_dir):
    config = validate_config(raw(family, glue_dir))
    assert trial_model(config, {}) == config.model
    chosen = trial_model(config, {"model.name": str(family["one"]), "model.max_length": 8,
                                  "learning_rate": 1e-3})
    assert (chosen.name, chosen.max_length) == (str(family["one"]), 8)


def test_nested_spelling_is_the_dotted_key(family, glue_dir):
    settings = raw(family, glue_dir)
    settings["search"] = {"model": {"max_length": {"grid": [8, 16]}}}
    config = validate_config(settings)
    assert list(config.search) == ["model.max_length"]


@pytest.mark.parametrize(("search", "message"), [
    ({"model.max_length": {"randint": [8, 64]}},
     "search.model.max_length: randint [8, 64] is a range, but each distinct value costs one "
     "tokenization of the data; allowed: choice or grid of listed values, or a constant"),
    ({"model.max_length": {"choice": [8, 0]}},
     "search.model.max_length: value 0 is not a positive integer"),
    ({"model.max_length": {"choice": [8, 16.0]}},
     "search.model.max_length: value 16.0 is not a positive integer"),
    ({"model.name": {"choice": ["", "x"]}}, "search.model.name: value '' is not a model name"),
    ({"model.dropout": 0.1}, "search.model.dropout: not searchable; allowed model keys: "
                             "model.name, model.max_length"),
])
def test_refused_model_domains(family, glue_dir, search, message):
    with pytest.raises(ConfigError) as error:
        validate_config(raw(family, glue_dir, **search))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_model_key_cannot_be_mutated_by_pbt(family, glue_dir):
    settings = raw(family, glue_dir, learning_rate={"loguniform": [1e-4, 1e-3]})
    settings["train"] = {"max_epochs": 2, "eval_every_epochs": 0.5}
    settings["scheduler"] = {"type": "pbt", "mutations": ["learning_rate", "model.max_length"]}
    with pytest.raises(ConfigError, match=r"scheduler.mutations: 'model.max_length' cannot "
                                          r"change inside a running trial"):
        validate_config(settings)
    settings["scheduler"]["mutations"] = ["learning_rate"]  # searched, not mutated: fine
    validate_config(settings)


def test_position_limit_names_the_searched_key_and_the_model(family, glue_dir):
    config = validate_config(raw(family, glue_dir, **{"model.max_length": {"choice": [8, 513]}}))
    with pytest.raises(ConfigError, match=r"^search.model.max_length: 513 is above the position "
                                          r"limit 512 of model .*two; allowed: <= 512$"):
        resolve_models(config)


def test_fingerprint_follows_the_tokenizer_files_not_the_name(family):
    two, one, swapped = (tokenizer_fingerprint(str(family[k])) for k in ("two", "one", "swapped"))
    assert two == one != swapped


class CountingTask:
    """The real task, counting its tokenizations."""

    def __init__(self, task):
        self.task, self.calls = task, []

    def load_data(self, data, model_path, max_length):
        self.calls.append((model_path, max_length))
        return self.task.load_data(data, model_path, max_length)


def test_one_tokenization_per_tokenizer_and_length(family, glue_dir):
    config = validate_config(raw(family, glue_dir))
    task = CountingTask(task_for(config.data))
    data = tokenize_models(config, task, resolve_models(config))
    assert len(task.calls) == data.tokenizations == 4  # {two = one, swapped} x {8, 32}
    for name in map(str, family.values()):
        for length in (8, 32):
            _, bundle = data.for_trial(config, {"model.name": name, "model.max_length": length})
            assert int(bundle.train.lengths.max()) == length  # SST-2 has longer sentences
            assert len(bundle.train) == 64 and len(bundle.eval) == 32
    pick = {name: data.for_trial(config, {"model.name": str(family[name]),
                                          "model.max_length": 32})[1]
            for name in family}
    assert pick["two"] is pick["one"] and pick["swapped"] is not pick["one"]
    # the swapped vocabulary gives other ids for the same sentences
    assert (pick["two"].train.ids != pick["swapped"].train.ids).any()
    assert data.describe()[1].startswith("3 searched, max_length [8, 32]: 4 tokenizations")


def test_model_name_may_be_left_out_when_it_is_searched(family, glue_dir):
    settings = raw(family, glue_dir)
    settings["model"] = {"max_length": 64}
    assert validate_config(settings).model.name == str(family["two"])  # the first listed
    settings["search"] = {"model": {"name": {"grid": [str(family["one"])]}}}
    assert validate_config(settings).model.name == str(family["one"])
    del settings["search"]
    with pytest.raises(ConfigError, match="model.name: required field is missing"):
        validate_config(settings)


def test_confirm_and_replay_tokenize_only_the_models_they_run(family, glue_dir):
    from raytune_ft.schema import model_options, narrow_model_search

    config = validate_config(raw(family, glue_dir))
    one, two = str(family["one"]), str(family["two"])
    runs = [{"model.name": one, "model.max_length": 8}, {"model.name": two,
                                                         "model.max_length": 8}]
    narrowed = narrow_model_search(config, runs)
    assert model_options(narrowed) == ([one, two], [8])
    assert narrowed.search["model.max_length"] == 8  # one value: a constant
    assert narrowed.search["model.name"] == {"choice": [one, two]}


# ------------------------------------------------------------- review faults (issue 18c)

def test_a_fixed_name_outside_the_searched_names_is_refused(family, glue_dir):
    settings = raw(family, glue_dir)
    settings["search"]["model.name"] = {"choice": [str(family["one"]), str(family["swapped"])]}
    with pytest.raises(ConfigError) as error:
        validate_config(settings)  # model.name is family["two"]: never trained
    assert str(error.value) == (
        f"config: model.name: {str(family['two'])!r} is not among search.model.name "
        f"[{str(family['one'])!r}, {str(family['swapped'])!r}]; leave model.name out or "
        "list it")
    settings["search"]["model.name"] = {"choice": [str(family["one"]), str(family["two"])]}
    assert validate_config(settings).model.name == str(family["two"])  # listed: it stays


def test_nested_spelling_wins_over_the_dotted_one_as_documented(family, glue_dir, tmp_path):
    import yaml

    from raytune_ft.schema import load_config

    settings = raw(family, glue_dir)
    del settings["model"]["name"]
    one, swapped = str(family["one"]), str(family["swapped"])
    settings["search"] = {"model": {"name": {"choice": [one]}},
                          "model.name": {"choice": [swapped]}}  # written second, still loses
    config = validate_config(settings)
    assert config.search["model.name"] == {"choice": [one]} and config.model.name == one
    # so --set (which writes the nested spelling) overrides a file's dotted key
    settings["search"] = {"model.name": {"choice": [swapped]}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = load_config(path, [f"search.model.name={{choice: [{one}]}}"])
    assert config.search["model.name"] == {"choice": [one]} and config.model.name == one


def test_narrowing_keeps_the_fixed_name_among_the_searched(family, glue_dir):
    from raytune_ft.schema import narrow_model_search

    config = validate_config(raw(family, glue_dir))  # model.name: two
    one = str(family["one"])
    narrowed = narrow_model_search(config, [{"model.name": one, "model.max_length": 8}])
    assert narrowed.search["model.name"] == one and narrowed.model.name == one
    # what confirm and replay record is read back through the schema
    validate_config(narrowed.model_dump(mode="json"))


def test_freeze_layers_above_a_searched_model_depth_is_refused_before_training(
        family, glue_dir, tmp_path):
    from raytune_ft.tuning.runner import prepare

    settings = raw(family, glue_dir, freeze_layers={"choice": [0, 2]})
    settings["run"] = {"storage_path": str(tmp_path / "results")}
    with pytest.raises(ConfigError) as error:  # model `one` has 1 layer
        prepare(validate_config(settings))
    assert str(error.value) == (f"search.freeze_layers: 2 is above the 1 encoder layers of "
                                f"model {family['one']}; allowed: <= 1")
    settings["search"]["freeze_layers"] = {"randint": [0, 2]}  # bounds inclusive: 2 too
    with pytest.raises(ConfigError, match=r"^search.freeze_layers: 2 is above"):
        prepare(validate_config(settings))
    # one model (no model search): the same check, naming the fixed field
    settings = raw(family, glue_dir)
    settings["model"]["name"] = str(family["two"])
    settings["search"] = {}
    settings["train"] = {"freeze_layers": 3}
    settings["run"] = {"storage_path": str(tmp_path / "results")}
    with pytest.raises(ConfigError) as error:
        prepare(validate_config(settings))
    assert str(error.value) == (f"train.freeze_layers: 3 is above the 2 encoder layers of "
                                f"model {family['two']}; allowed: <= 2")
    assert not (tmp_path / "results").exists()  # refused before anything was written


def test_a_tagging_search_warns_about_the_words_cut_at_every_length(family, tmp_path):
    """Each tokenization cuts its own training words: the header names every length's count
    (a warning all lengths share, e.g. a tag no training word has, is said once)."""
    from support import REPO

    from raytune_ft.tuning.runner import prepare

    ewt = REPO.parent / "shared" / "data" / "ud_ewt"
    settings = {"name": "tags", "metric": "eval_token_accuracy",
                "model": {"name": str(family["two"]), "max_length": 64},
                "data": {"kind": "token_classification",
                         "train_file": str(ewt / "en_ewt-ud-test.conllu"),
                         "eval_file": str(ewt / "en_ewt-ud-dev.conllu"),
                         "max_train_samples": 48, "max_eval_samples": 16,
                         "label_names": ["NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP",
                                         "AUX", "CCONJ", "SCONJ", "PART", "NUM", "PROPN",
                                         "PUNCT", "SYM", "INTJ", "X", "FOREIGN"]},
                "search": {"model.max_length": {"grid": [8, 16]}},
                "run": {"storage_path": str(tmp_path / "results")}}
    prepared = prepare(validate_config(settings))
    cut = {length: bundle.train.words_cut
           for (_, length, _), bundle in prepared.models.bundles.items()}
    assert cut[8] > cut[16] > 0
    for length in (8, 16):
        assert (f"max_length {length}: {cut[length]} train word(s) lie beyond model.max_length "
                f"{length} sub-words: cut, not trained (evaluation scores every word, reading "
                "long sentences in overlapping windows)") in prepared.warnings
    assert prepared.warnings.count("no training word has tag(s) 'X', 'FOREIGN'") == 1
    # header lines: said once where every tokenization gives the same, else per length
    windowed = {length: bundle.eval.windowed
                for (_, length, _), bundle in prepared.models.bundles.items()}
    assert windowed[8] > windowed[16] > 0
    about = dict(prepared.about_data)
    assert about["windows"] == "; ".join(
        f"max_length {length}: {windowed[length]} eval sentences longer than max_length "
        f"{length} read in overlapping windows" for length in (8, 16))
    assert about["words"].endswith("(every eval word scored)") and "max_length" not in \
        about["words"]


def test_a_searched_length_that_leaves_no_room_names_the_searched_key(family, tmp_path):
    """max_length 2 holds only [CLS] and [SEP]: refused before any trial, naming
    search.model.max_length when the length is searched, model.max_length when fixed."""
    from support import REPO

    from raytune_ft.tuning.runner import prepare

    ewt = REPO.parent / "shared" / "data" / "ud_ewt" / "en_ewt-ud-dev.conllu"
    settings = {"name": "tags", "metric": "eval_token_accuracy",
                "model": {"name": str(family["two"]), "max_length": 16},
                "data": {"kind": "token_classification", "train_file": str(ewt),
                         "eval_file": str(ewt), "max_train_samples": 8,
                         "max_eval_samples": 8},
                "search": {"model.max_length": {"grid": [16, 2]}},
                "run": {"storage_path": str(tmp_path / "results")}}
    message = ("model.max_length: 2 leaves no room for a word beside the tokenizer's 2 "
               "special tokens")
    with pytest.raises(ConfigError) as error:
        prepare(validate_config(settings))
    assert str(error.value) == "search." + message
    settings["search"] = {"model.name": {"choice": [str(family["two"])]}}
    settings["model"]["max_length"] = 2
    with pytest.raises(ConfigError) as error:
        prepare(validate_config(settings))
    assert str(error.value) == message


# ------------------------------------------------------------- data keys (issue 27)
# A task's encoding may depend on data settings (question answering: data.doc_stride): they
# are searched like model.max_length, one encoding per value, and the number of samples
# (windows) may differ between encodings of the same questions.

SQUAD = REPO.parent / "shared" / "data" / "squad"


def qa_raw(model, tmp_path=None, **search):
    settings = {"name": "q", "model": {"name": str(model), "max_length": 64},
                "data": {"kind": "question_answering", "train_file": str(SQUAD / "train.json"),
                         "eval_file": str(SQUAD / "dev.json"), "max_train_samples": 40,
                         "max_eval_samples": 24},
                "search": {"data.doc_stride": {"choice": [16, 24]}, **search}}
    if tmp_path is not None:
        settings["run"] = {"storage_path": str(tmp_path / "results")}
    return settings


def test_data_doc_stride_is_searched_with_listed_values(tiny_bert):
    config = validate_config(qa_raw(tiny_bert))
    assert config.metric == "eval_f1" and config.space()["data.doc_stride"].values == [16, 24]
    assert trial_data(config, {}) is config.data
    assert trial_data(config, {"data.doc_stride": 24, "learning_rate": 1e-3}).doc_stride == 24
    settings = qa_raw(tiny_bert)
    settings["search"] = {"data": {"doc_stride": {"grid": [16, 32]}}}  # the nested spelling
    nested = validate_config(settings)
    assert list(nested.search) == ["data.doc_stride"]
    assert [d.doc_stride for d in data_options(nested.data, nested.space())] == [16, 32]


@pytest.mark.parametrize(("search", "message"), [
    ({"data.doc_stride": {"randint": [16, 32]}},
     "search.data.doc_stride: randint [16, 32] is a range, but each distinct value costs one "
     "encoding of the data; allowed: choice or grid of listed values, or a constant"),
    ({"data.doc_stride": {"choice": [16, 24.0]}},
     "search.data.doc_stride: value 24.0 is not an integer"),
    ({"data.doc_stride": {"choice": [16, 0]}},
     "search.data.doc_stride: value 0 is invalid: Input should be greater than 0"),
    ({"data.doc_stride": {"choice": [16, 64]}},
     "search.data.doc_stride: 64 is not below model.max_length 64; the stride is the number "
     "of context tokens consecutive windows share"),
    ({"model.max_length": {"choice": [64, 24]}},
     "search.data.doc_stride: 24 is not below model.max_length 24"),
    ({"data.n_best": {"choice": [5, 10]}},
     "search.data.n_best: not searchable; allowed data keys for data.kind question_answering: "
     "data.doc_stride"),
])
def test_refused_data_domains(tiny_bert, search, message):
    with pytest.raises(ConfigError) as error:
        validate_config(qa_raw(tiny_bert, **search))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_fixed_stride_is_checked_against_every_length_and_other_tasks_search_none(
        tiny_bert, glue_dir, family):
    settings = qa_raw(tiny_bert)
    settings["search"] = {}
    settings["data"]["doc_stride"] = 64
    with pytest.raises(ConfigError, match=r"^config: data.doc_stride: 64 is not below "
                                          r"model.max_length 64;"):
        validate_config(settings)
    with pytest.raises(ConfigError, match=r"search.data.doc_stride: not searchable; allowed data "
                                          r"keys for data.kind sequence_classification: none"):
        validate_config(raw(family, glue_dir, **{"data.doc_stride": {"choice": [8, 16]}}))
    with pytest.raises(ConfigError, match=r"data.doc_stride: unknown key for data.kind "
                                          r"sequence_classification \(read by data.kind "
                                          r"question_answering\)"):
        validate_config({**raw(family, glue_dir), "data": {"task": "sst2", "doc_stride": 8}})


def test_a_data_key_cannot_be_mutated_by_pbt(tiny_bert):
    settings = qa_raw(tiny_bert, learning_rate={"loguniform": [1e-4, 1e-3]})
    settings["train"] = {"max_epochs": 2, "eval_every_epochs": 0.5}
    settings["scheduler"] = {"type": "pbt", "mutations": ["learning_rate", "data.doc_stride"]}
    with pytest.raises(ConfigError, match=r"scheduler.mutations: 'data.doc_stride' cannot "
                                          r"change inside a running trial"):
        validate_config(settings)


def test_one_encoding_per_length_and_stride_with_a_budget_per_window_count(tiny_bert,
                                                                          tmp_path):
    from raytune_ft.schema import narrow_model_search
    from raytune_ft.tuning.runner import prepare

    config = validate_config(qa_raw(tiny_bert, tmp_path,
                                    **{"model.max_length": {"choice": [56, 64]}}))
    task = CountingTask(task_for(config.data))
    data = tokenize_models(config, task, resolve_models(config))
    assert data.tokenizations == len(task.calls) == 4
    windows = {}
    for length in (56, 64):
        for stride in (16, 24):
            _, bundle = data.for_trial(config, {"model.max_length": length,
                                                "data.doc_stride": stride})
            assert (bundle.train.max_length, bundle.train.doc_stride) == (length, stride)
            assert bundle.train.source_examples == 40 and bundle.eval.source_examples == 24
            windows[length, stride] = len(bundle.train)
    # shorter windows and a larger overlap both cut the same questions into more windows
    assert windows[56, 24] > windows[56, 16] > windows[64, 16]
    assert windows[56, 24] > windows[64, 24] > windows[64, 16]
    assert data.describe()[1].startswith(
        f"{tiny_bert}, max_length [56, 64], data.doc_stride [16, 24]: 4 tokenizations")
    prepared = prepare(config)
    plan = prepared.plan
    sizes = sorted({b.n_train for b in (plan.budget, *plan.other_budgets)})
    assert sizes == sorted(set(windows.values()))
    assert plan.budget_for(windows[56, 24]).total_samples == 3 * windows[56, 24]  # 3 epochs
    record = json.loads(json.dumps(plan.record()))
    assert len(record["other_budgets"]) == len(sizes) - 1
    narrowed = narrow_model_search(config, [{"model.max_length": 56, "data.doc_stride": 24}])
    assert narrowed.search["data.doc_stride"] == 24 and narrowed.search["model.max_length"] == 56
    assert [d.doc_stride for d in data_options(narrowed.data, narrowed.space())] == [24]
