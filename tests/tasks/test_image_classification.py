"""Image classification: readers (ImageFolder, tables), bad input, the encoded arrays, the
per-batch normalisation, seeded augmentation (a restore continues bit for bit), metrics."""

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from raytune_ft.config import DataConfig, TrainConfig
from raytune_ft.errors import ConfigError
from raytune_ft.tasks import get_task
from raytune_ft.tasks.image_classification import (
    augment,
    collate,
    image_metrics,
    pixel_values,
)
from raytune_ft.training.loop import FineTuneLoop

TASK = get_task("image_classification")


def data_config(train, val, **fields) -> DataConfig:
    return DataConfig(kind="image_classification", train_file=str(train), eval_file=str(val),
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
    assert batch["pixels"].dtype == torch.uint8  # normalised on the device, by forward
    assert torch.equal(batch["pixels"], torch.from_numpy(bundle.eval.pixels[indices]))
    pixels = bundle.eval.pixels[indices].astype(np.float32)
    expected = (pixels / 255 - 0.5) / 0.5
    assert torch.allclose(pixel_values(batch), torch.from_numpy(expected), atol=1e-6)
    assert batch["labels"].tolist() == bundle.eval.labels[indices].tolist()
    # the evaluation split is never augmented; the training split is, by collate's task
    eval_batch = TASK.collate(bundle, bundle.eval, indices)
    assert torch.equal(eval_batch["pixels"], batch["pixels"])


def test_the_eval_batches_a_trial_keeps_are_the_uint8_images(digits_dir, tiny_resnet):
    """The loop collates the evaluation set once and keeps it: measured, its tensors take
    the uint8 split's bytes (plus labels), not 4x as float32; and they score the same as
    float32 images normalised on the host."""
    data = TASK.load_data(data_config(digits_dir / "train", digits_dir / "val"),
                          str(tiny_resnet), 0)
    loop = FineTuneLoop(TASK.load_model(str(tiny_resnet), data.label_names, 0), data,
                        TrainConfig(eval_batch_size=64))
    kept = sum(t.untyped_storage().nbytes() for _, batch in loop._eval_batches()
               for t in batch.values())
    pixels, labels = data.eval.pixels.nbytes, data.eval.labels.nbytes  # 359 x 3x16x16
    batches = len(loop._eval_batches())
    assert kept == pixels + labels + batches * 2 * 3 * 4, (kept, pixels)
    scores = loop.evaluate()
    loop.model.eval()
    with torch.no_grad():
        images = (torch.from_numpy(data.eval.pixels).float() / 255 - 0.5) / 0.5
        top = loop.model(pixel_values=images).logits.argmax(-1).numpy()
    assert scores["eval_accuracy"] == float(np.mean(top == data.eval.labels))


def test_augmentation_is_seeded_by_sample_and_step(bundle):
    indices = np.array([3, 4, 7])

    def at(position: int, which=indices):
        torch.manual_seed(position)  # what the loop does before collating a step
        return pixel_values(TASK.collate(bundle, bundle.train, which))

    plain = pixel_values(collate(bundle.train, indices, augmented=False))
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


def test_flip_only_augmentation_keeps_the_pixels_uint8(bundle):
    """Flipping needs no interpolation: the batch stays uint8 (a quarter of float32's bytes
    to the device), and the model sees the pixels a float flip gives."""
    import copy

    split = copy.copy(bundle.train)
    split.crop_scale, split.flip = None, True
    indices = np.arange(12)
    torch.manual_seed(5)  # what the loop does before collating a step
    batch = collate(split, indices, augmented=True)
    assert batch["pixels"].dtype == torch.uint8
    torch.manual_seed(5)
    step_seed = int(torch.randint(0, 2**31 - 1, ()))
    floats = torch.stack([augment(torch.from_numpy(split.pixels[i]).float(),
                                  np.random.default_rng([step_seed, int(i)]), None, True)
                          for i in indices])
    assert not torch.equal(floats, torch.from_numpy(split.pixels[indices]).float())  # flipped
    assert torch.equal(pixel_values(batch), pixel_values({**batch, "pixels": floats}))


def test_a_restored_trial_continues_bit_for_bit_with_augmentation(bundle, tiny_resnet,
                                                                  tmp_path):
    hp = TrainConfig(learning_rate=3e-3, batch_size=16, max_epochs=2, eval_every_epochs=1,
                     max_micro_batch=8)
    straight = FineTuneLoop(TASK.load_model(str(tiny_resnet), bundle.label_names, 0), bundle, hp)
    straight.run_interval()
    straight.save(tmp_path)
    end = straight.run_interval()
    restored = FineTuneLoop(TASK.load_model(str(tiny_resnet), bundle.label_names, 1), bundle, hp)
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


# ------------------------------------------------------------------ image modes

RAMP = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # 0 .. 65535, high byte 0 .. 255


def sixteen_bit_tree(root):
    """Two classes of 16-bit greyscale images that differ only in brightness: a ramp up
    (16-bit PNG) and down (big-endian 16-bit TIFF), in both splits."""
    for split in ("train", "val"):
        for name, values in (("up", RAMP), ("down", 65535 - RAMP)):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(values).save(root / split / name / "a.png")
            Image.fromarray(values.astype(">u2")).save(root / split / name / "b.tiff")
    return root


def test_16_bit_images_are_read_by_their_high_byte_not_clipped(tmp_path, tiny_resnet):
    tree = sixteen_bit_tree(tmp_path)
    assert {Image.open(p).mode for p in tree.glob("*/*/*")} == {"I;16", "I;16B"}
    data = TASK.load_data(data_config(tree / "train", tree / "val"), str(tiny_resnet), 0)
    assert data.label_names == ["down", "up"]
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for split in (data.train, data.eval):
        for pixels, label in zip(split.pixels, split.labels):
            expected = ramp if data.label_names[label] == "up" else 255 - ramp
            assert pixels.dtype == np.uint8 and pixels.shape == (3, 16, 16)
            for channel in pixels:  # grey to RGB: three equal channels
                assert np.array_equal(channel, expected)
    assert dict(TASK.describe(data))["modes"] == (
        "images read as 4 I;16, 4 I;16B; converted to RGB (16-bit greyscale by its high byte)")


@pytest.mark.parametrize("mode, values, what", [
    ("I", RAMP.astype(np.int32), "a 32-bit integer image (mode I)"),
    ("F", RAMP.astype(np.float32) / 65535, "a 32-bit floating-point image (mode F)"),
])
def test_images_without_a_fixed_range_are_refused_in_one_line(tmp_path, digits_dir,
                                                               tiny_resnet, mode, values, what):
    tree = small_tree(tmp_path, digits_dir)
    culprit = tree / "train" / "3" / "wide.tiff"
    Image.fromarray(values).save(culprit)
    assert Image.open(culprit).mode == mode
    with pytest.raises(ConfigError) as error:
        TASK.load_data(data_config(tree / "train", tree / "val"), str(tiny_resnet), 0)
    assert str(error.value) == (
        f"data.train_file: {culprit}: {what} has no fixed range to read as 8 bits; allowed: "
        "8-bit or 16-bit images (convert it first)")


def test_a_conversion_pillow_lacks_is_refused_in_one_line():
    from raytune_ft.tasks._images import ImageItem, convert

    item = ImageItem(Path("lab.tiff"), "a", "lab.tiff")
    with pytest.raises(ConfigError) as error:
        convert(Image.new("LAB", (2, 2)), "L", item, "data.train_file")
    assert str(error.value) == ("data.train_file: lab.tiff: a LAB image cannot be read as L "
                                "(conversion from LAB to RGB not supported)")


def test_the_exported_usage_reads_a_16_bit_image_as_training_did(tmp_path, tiny_resnet):
    """The model card's usage, run as written, gives the exported image processor the
    pixels the trial trained on (the pipeline alone would clip a 16-bit image to white)."""
    from transformers import pipeline

    tree = sixteen_bit_tree(tmp_path / "tree")
    data = TASK.load_data(data_config(tree / "train", tree / "val"), str(tiny_resnet), 0)
    out = tmp_path / "model"
    TASK.load_model(str(tiny_resnet), data.label_names, 0).save_pretrained(out)
    TASK.save_processor(str(tiny_resnet), str(out), 0)
    photo = tree / "val" / "up" / "a.png"
    code = "\n".join(TASK.usage()).replace("<this folder>", str(out))
    namespace: dict = {}
    exec(code.replace("photo.png", str(photo)), namespace)  # noqa: S102 - the card's lines
    processed = namespace["classify"].image_processor(namespace["image"].convert("RGB"),
                                                      return_tensors="pt")["pixel_values"]
    index = next(i for i, label in enumerate(data.eval.labels)
                 if data.label_names[label] == "up")  # a.png sorts first in its class
    trained = pixel_values(collate(data.eval, np.array([index]), augmented=False))
    assert torch.allclose(processed, trained, atol=1e-6)
    clipped = pipeline("image-classification", model=str(out)).image_processor(
        Image.open(photo).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert not torch.allclose(clipped, trained, atol=0.1)  # what the card's lines avoid


def test_the_card_warns_that_the_processor_and_pipeline_clip_16_bit_images():
    assert TASK.card_input(None)[1] == (
        "- 16-bit greyscale images: this image processor and "
        '`pipeline("image-classification")` given a file clip them to almost all white; '
        "read them as the Use section shows (their high byte, as in training)")
