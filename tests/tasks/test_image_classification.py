"""Image classification: readers (ImageFolder, tables), bad input, the encoded arrays, the
per-batch normalisation, seeded augmentation (a restore continues bit for bit), metrics."""

import io
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from raytune_ft.config import DataSettings, TrainConfig
from raytune_ft.errors import ConfigError
from raytune_ft.schema import data_settings
from raytune_ft.tasks import get_task
from raytune_ft.tasks.image_classification import augment, collate, image_metrics
from raytune_ft.training.loop import FineTuneLoop

TASK = get_task("image_classification")


def data_config(train, val, **fields) -> DataSettings:
    return data_settings(kind="image_classification", train_file=str(train), eval_file=str(val),
                      **fields)


@pytest.fixture(scope="module")
def bundle(digits_dir, tiny_resnet):
    config = data_config(digits_dir / "train", digits_dir / "val", max_train_samples=96,
                         max_eval_samples=64, random_crop_scale=0.5)
    return TASK.load_data(config, str(tiny_resnet), 0)


def small_tree(tmp_path, digits_dir, per_class=3):
    """A copy of a few digits per class of both splits (to break on purpose)."""
    for split in ("train", "val"):
        for folder in sorted((digits_dir / split).iterdir()):
            target = tmp_path / split / folder.name
            target.mkdir(parents=True)
            for file in sorted(folder.iterdir())[:per_class]:
                shutil.copy(file, target / file.name)
    return tmp_path


def test_image_folder_encodes_the_digits_as_uint8_once(digits_dir, tiny_resnet):
    data = TASK.load_data(data_config(digits_dir / "train", digits_dir / "val"),
                          str(tiny_resnet), 0)
    assert (len(data.train), len(data.eval)) == (1438, 359)  # the seeded 80/20 split
    assert data.label_names == [str(d) for d in range(10)]
    assert data.train.pixels.dtype == np.uint8 and data.train.pixels.shape[1:] == (3, 16, 16)
    assert data.task == digits_dir.name and data.kind == "image_classification"
    assert data.metrics == ["eval_accuracy", "eval_loss", "eval_macro_f1", "eval_top5"]
    assert np.bincount(data.eval.labels).tolist() == [
        len(list((digits_dir / "val" / str(d)).iterdir())) for d in range(10)]
    lines = dict(TASK.describe(data))
    assert lines["modes"] == "images read as 1797 L; converted to RGB"
    # (1438 + 359) x 3x16x16 bytes + 8-byte labels
    assert "object store 1.3 MB (train 1.1, eval 0.3)" in lines["images"]


def test_tables_with_paths_or_bytes_read_the_same_pixels_as_the_folder(tmp_path, digits_dir,
                                                                       tiny_resnet):
    tree = small_tree(tmp_path / "tree", digits_dir)
    folder = TASK.load_data(data_config(tree / "train", tree / "val"), str(tiny_resnet), 0)
    for split in ("train", "val"):
        files = sorted((tree / split).glob("*/*.png"))
        rows = pd.DataFrame({"image": [str(f.relative_to(tree)) for f in files],
                             "digit": [int(f.parent.name) for f in files]})
        rows.to_csv(tree / f"{split}.csv", index=False)
        rows.assign(image=[f.read_bytes() for f in files]).to_parquet(tree / f"{split}.parquet")
    for suffix in ("csv", "parquet"):
        table = TASK.load_data(data_config(tree / f"train.{suffix}", tree / f"val.{suffix}",
                                           image_column="image", label_column="digit"),
                               str(tiny_resnet), 0)
        assert table.label_names == folder.label_names
        assert np.array_equal(table.train.pixels, folder.train.pixels)
        assert np.array_equal(table.eval.labels, folder.eval.labels)


@pytest.mark.parametrize("breakage,message", [
    ("truncated", "unreadable image"),
    ("unknown_class", "class 'x' is not in data.train_file"),
    ("empty_class", "class folder"),
    ("loose_file", "is not in a class folder"),
])
def test_bad_image_folders_are_one_line_naming_the_file(tmp_path, digits_dir, tiny_resnet,
                                                        breakage, message):
    tree = small_tree(tmp_path, digits_dir)
    culprit = tree / "train" / "3"
    if breakage == "truncated":
        culprit = next(culprit.iterdir())
        culprit.write_bytes(culprit.read_bytes()[:40])
    elif breakage == "unknown_class":
        culprit = tree / "val" / "x"
        shutil.copytree(tree / "val" / "3", culprit)
    elif breakage == "empty_class":
        shutil.rmtree(culprit)
        culprit.mkdir()
    else:
        culprit = tree / "train" / "notes.txt"
        culprit.write_text("not an image")
    with pytest.raises(ConfigError) as error:
        TASK.load_data(data_config(tree / "train", tree / "val"), str(tiny_resnet), 0)
    text = str(error.value)
    assert message in text and "\n" not in text
    if breakage != "unknown_class":
        assert str(culprit) in text


def test_mixed_modes_are_converted_and_said(tmp_path, digits_dir, tiny_resnet):
    tree = small_tree(tmp_path, digits_dir)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tree / "train" / "0" / "red.png")
    data = TASK.load_data(data_config(tree / "train", tree / "val"), str(tiny_resnet), 0)
    assert dict(TASK.describe(data))["modes"] == "images read as 60 L, 1 RGB; converted to RGB"


def test_the_object_store_limit_refuses_with_the_figure(digits_dir, tiny_resnet):
    config = data_config(digits_dir / "train", digits_dir / "val", max_object_store_mb=0.5)
    with pytest.raises(ConfigError, match=r"^data.max_object_store_mb: the encoded splits take "
                                          r"1\.1 MB .* above the limit 0\.5 MB"):
        TASK.load_data(config, str(tiny_resnet), 0)


def test_a_table_needs_its_image_and_label_columns(tmp_path):
    with pytest.raises(ValueError, match="data.image_column and data.label_column are required"):
        data_config(tmp_path / "train.csv", tmp_path / "val.csv", label_column="y")


def test_batches_are_rescaled_and_normalised_by_the_processor(bundle):
    indices = np.array([0, 5])
    batch = collate(bundle.eval, indices, augmented=False)
    pixels = bundle.eval.pixels[indices].astype(np.float32)
    expected = (pixels / 255 - 0.5) / 0.5
    assert torch.allclose(batch["pixel_values"], torch.from_numpy(expected), atol=1e-6)
    assert batch["labels"].tolist() == bundle.eval.labels[indices].tolist()
    # the evaluation split is never augmented; the training split is, by collate's task
    eval_batch = TASK.collate(bundle, bundle.eval, indices)
    assert torch.equal(eval_batch["pixel_values"], batch["pixel_values"])


def test_augmentation_is_seeded_by_sample_and_step(bundle):
    indices = np.array([3, 4, 7])

    def at(position: int, which=indices):
        torch.manual_seed(position)  # what the loop does before collating a step
        return TASK.collate(bundle, bundle.train, which)["pixel_values"]

    plain = collate(bundle.train, indices, augmented=False)["pixel_values"]
    assert torch.equal(at(1), at(1))  # the same step: the same crops
    assert not torch.equal(at(1), at(2))  # another step: other crops
    assert not torch.equal(at(1), plain)
    # a sample's crop depends on its own index and the step, not on its batch neighbours
    assert torch.equal(at(1)[1], at(1, np.array([9, 4]))[1])


def test_flip_alone_mirrors_or_keeps_each_image_exactly():
    image = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    seen = set()
    for seed in range(20):
        out = augment(image, np.random.default_rng(seed), None, True)
        assert torch.equal(out, image) or torch.equal(out, image.flip(-1))
        seen.add(torch.equal(out, image))
    assert seen == {True, False}
    # a full-area crop with ratio 1 is the identity; any crop keeps the size
    assert augment(image, np.random.default_rng(0), 0.3, False).shape == image.shape


def test_a_restored_trial_continues_bit_for_bit_with_augmentation(bundle, tiny_resnet,
                                                                  tmp_path):
    hp = TrainConfig(learning_rate=3e-3, batch_size=16, max_epochs=2, eval_every_epochs=1,
                     max_micro_batch=8)
    straight = FineTuneLoop(TASK.load_model(str(tiny_resnet), bundle.label_names, 0), bundle, hp,
                            task=get_task(bundle.kind))
    straight.run_interval()
    straight.save(tmp_path)
    end = straight.run_interval()
    restored = FineTuneLoop(TASK.load_model(str(tiny_resnet), bundle.label_names, 1), bundle, hp,
                            task=get_task(bundle.kind))
    restored.load(tmp_path)
    again = restored.run_interval()
    assert again["train_loss"] == end["train_loss"] and again["eval_loss"] == end["eval_loss"]
    for (name, a), b in zip(straight.model.state_dict().items(),
                            restored.model.state_dict().values()):
        assert torch.equal(a, b), name  # BatchNorm running statistics included


def test_metrics_accuracy_top5_and_macro_f1_by_hand():
    labels = np.array([0, 1, 2, 2, 5, 6])
    top = np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4], [2, 0, 1, 3, 4], [1, 0, 3, 4, 6],
                    [5, 0, 1, 2, 3], [0, 1, 2, 3, 4]])
    metrics = image_metrics(top, labels, num_labels=7)
    assert metrics["eval_accuracy"] == 3 / 6
    assert metrics["eval_top5"] == 4 / 6  # rows 3 (2) and 5 (6): not among their five
    # per-class F1 over the classes in the labels or the predictions (0, 1, 2, 5, 6; classes
    # 3 and 4 are in neither): 0: 2/3 (p 1/2, r 1); 1: 0; 2: 1/2 (p 1/2, r 1/2); 5: 1; 6: 0
    f1 = {0: 2 * (1 / 2 * 1) / (1 / 2 + 1), 1: 0.0, 2: 2 * (1 / 2 * 1 / 2) / (1 / 2 + 1 / 2),
          5: 1.0, 6: 0.0}
    assert metrics["eval_macro_f1"] == pytest.approx(sum(f1.values()) / 5, abs=1e-12)
    # an eval set without some class, predicted perfectly, scores 1 (not 0.75 of 4 classes)
    perfect = image_metrics(np.array([[0], [1], [2]]), np.array([0, 1, 2]), num_labels=4)
    assert perfect["eval_macro_f1"] == 1.0
    assert "eval_top5" not in image_metrics(top[:, :2], labels, num_labels=5)


def test_the_image_column_may_hold_datasets_image_dicts(tmp_path, digits_dir, tiny_resnet):
    files = sorted((digits_dir / "train").glob("*/*.png"))[:30]
    frame = pd.DataFrame({"img": [{"bytes": f.read_bytes(), "path": None} for f in files],
                          "label": [f.parent.name for f in files]})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_parquet(tmp_path / "v.parquet")
    data = TASK.load_data(data_config(tmp_path / "t.parquet", tmp_path / "v.parquet",
                                      image_column="img", label_column="label"),
                          str(tiny_resnet), 0)
    first = np.asarray(Image.open(io.BytesIO(files[0].read_bytes())))
    assert len(data.train) == 30 and first.shape == (8, 8)


def test_a_model_folder_without_weights_is_refused_not_randomly_initialised(tmp_path,
                                                                            tiny_resnet):
    from raytune_ft.errors import ModelError

    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_resnet / name, tmp_path / name)
    with pytest.raises(ModelError, match="no file named model.safetensors"):
        TASK.load_model(str(tmp_path), ["a", "b"], 0)
