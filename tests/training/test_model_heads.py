"""How a model folder's own task head is treated (training/model.py `load_pretrained`), on
folders written by `save_pretrained`: kept with its rows mapped by label name when its labels
are the data's, otherwise replaced by the fresh head the trial's seed gives a folder without
one, for every task (sequence, token and image classification)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import build_tiny_model

from raytune_ft.tasks import get_task

TOKENS = get_task("token_classification")
SEQUENCES = get_task("sequence_classification")
IMAGES = get_task("image_classification")


def save_with_head(task, body, out, names, seed=9):
    """`body` with a random head for `names` (in that id order), saved as a model folder."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, task.auto_class).from_pretrained(
        body, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)}, ignore_mismatched_sizes=True)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "preprocessor_config.json"):
        if (body / name).is_file():
            (out / name).write_bytes((body / name).read_bytes())
    return model.eval()


@pytest.fixture(scope="module")
def words(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)(["Peter Blackburn rests in Paris ."],
                                                     return_tensors="pt")


@pytest.mark.parametrize("task", [TOKENS, SEQUENCES], ids=["token", "sequence"])
def test_a_head_with_the_datas_labels_is_kept_row_by_label_name(tmp_path, tiny_bert, words,
                                                                 task):
    """An NER folder tagging [O, B-PER, I-PER] read for the data's sorted [B-PER, I-PER, O]:
    each tag's logit is the folder's logit of that tag, whatever the seed."""
    folder_names = ["O", "B-PER", "I-PER"]
    folder = save_with_head(task, tiny_bert, tmp_path / "ner", folder_names)
    data_names = sorted(folder_names)
    with torch.no_grad():
        expected = folder(**words).logits
    for seed in (0, 1):
        model = task.load_model(str(tmp_path / "ner"), data_names, seed).eval()
        assert model.config.id2label == dict(enumerate(data_names))
        with torch.no_grad():
            logits = model(**words).logits
        rows = [folder_names.index(name) for name in data_names]
        torch.testing.assert_close(logits, expected[..., rows], rtol=1e-5, atol=1e-6)
        assert torch.equal(model.classifier.weight, folder.classifier.weight[rows])
        assert {"classifier.weight", "classifier.bias"} <= set(model.raytune_ft_head)


@pytest.mark.parametrize("task", [TOKENS, SEQUENCES], ids=["token", "sequence"])
def test_a_head_of_other_labels_or_size_is_the_fresh_head_of_the_seed(tmp_path, tiny_bert,
                                                                      task):
    data_names = ["B-LOC", "I-LOC", "O"]
    fresh = {seed: task.load_model(str(tiny_bert), data_names, seed) for seed in (0, 1)}
    for folder_names in (["B-PER", "I-PER", "O"], ["LABEL_0", "LABEL_1", "LABEL_2"],
                         ["B-LOC", "I-LOC", "O", "B-PER"]):  # another size: not an error
        out = tmp_path / "-".join(folder_names)
        kept = save_with_head(task, tiny_bert, out, folder_names)
        for seed, reference in fresh.items():
            model = task.load_model(str(out), data_names, seed)
            for name, param in reference.named_parameters():
                assert torch.equal(dict(model.named_parameters())[name], param), name
        assert not torch.equal(model.classifier.weight[:3], kept.classifier.weight[:3])


def test_an_image_head_of_the_same_size_is_replaced_per_seed(tmp_path, tiny_resnet):
    """A hub image model's head with generic labels (LABEL_0..) of the data's size: each
    trial's seed gives its own fresh head, the one a body-only folder gives."""
    names = [str(i) for i in range(4)]
    out = tmp_path / "resnet-head"
    kept = save_with_head(IMAGES, tiny_resnet, out, [f"LABEL_{i}" for i in range(4)])
    heads = {seed: IMAGES.load_model(str(out), names, seed).classifier[1].weight
             for seed in (0, 1)}
    assert not torch.equal(heads[0], heads[1])
    for seed, head in heads.items():
        body_only = IMAGES.load_model(str(tiny_resnet), names, seed).classifier[1].weight
        assert torch.equal(head, body_only)
        assert not torch.equal(head, kept.classifier[1].weight)
    # the same classes, in another order: kept, row by class name
    save_with_head(IMAGES, tiny_resnet, out, ["3", "1", "0", "2"])
    model = IMAGES.load_model(str(out), names, 0)
    folder = get_task("image_classification").load_model(str(out), ["3", "1", "0", "2"], 5)
    order = [["3", "1", "0", "2"].index(name) for name in names]
    assert torch.equal(model.classifier[1].weight, folder.classifier[1].weight[order])
    assert np.array_equal(model.classifier[1].bias.detach().numpy(),
                          folder.classifier[1].bias.detach().numpy()[order])


def test_a_folder_whose_body_does_not_fit_its_config_is_refused(tmp_path, tiny_bert):
    import json

    from raytune_ft.errors import ModelError

    out = tmp_path / "wide"
    build_tiny_model(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(ModelError, match="holds weights of other shapes than its config"):
        SEQUENCES.load_model(str(out), ["0", "1"], 0)


def test_the_run_header_says_whether_the_folders_head_is_kept(tmp_path, tiny_bert):
    """`prepare`'s `head` line, from the folder's config.json once in the driver: kept
    (rows by label name) where its labels are the data's, else fresh from each seed."""
    from raytune_ft.config import validate_config
    from raytune_ft.training.model import head_origin
    from raytune_ft.tuning.runner import prepare

    tags = tmp_path / "tags.conll"
    tags.write_text("Peter\tB-PER\nBlackburn\tI-PER\nrests\tO\n\nAnna\tB-PER\nsings\tO\n")
    save_with_head(TOKENS, tiny_bert, tmp_path / "ner", ["O", "B-PER", "I-PER"])
    save_with_head(TOKENS, tiny_bert, tmp_path / "pos", ["NOUN", "VERB", "PUNCT"])
    save_with_head(TOKENS, tiny_bert, tmp_path / "generic", [f"LABEL_{i}" for i in range(9)])
    kept = "the folder's own (its labels are the data's), rows mapped by label name"
    fresh = "fresh from each trial's seed (train.seed): "
    data = ["B-PER", "I-PER", "O"]
    assert head_origin(str(tmp_path / "ner"), data) == kept
    assert head_origin(str(tmp_path / "pos"), data) == \
        fresh + "the folder's 3 labels (NOUN, VERB, PUNCT) are not the data's"
    assert head_origin(str(tmp_path / "generic"), data) == \
        fresh + "the folder's 9 labels (LABEL_0, LABEL_1, LABEL_2, LABEL_3, LABEL_4, ...) " \
        "are not the data's"
    assert head_origin(str(tiny_bert), data) == fresh + "the folder holds no head"
    for folder, expected in (("ner", kept), ("pos", fresh)):
        settings = {"name": "heads", "metric": "eval_token_accuracy",
                    "model": {"name": str(tmp_path / folder), "max_length": 16},
                    "data": {"kind": "token_classification", "train_file": str(tags),
                             "eval_file": str(tags)},
                    "run": {"storage_path": str(tmp_path / "results")}}
        head = dict(prepare(validate_config(settings)).about_data)["head"]
        assert head.startswith(expected)
