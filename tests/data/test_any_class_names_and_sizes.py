"""What a user's own folder may hold: classes of unequal (small) sizes, class names that
mean something to matplotlib, files that are not PNG or JPEG. Each step copes or names the
file: nothing crashes after minutes of work, nothing is silently dropped."""

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from image_finetune.config import DataParams, Params
from image_finetune.report import plot_confusion, plot_gallery
from image_finetune.steps.augment import preview_augmentation
from image_finetune.steps.predict_batch import predict_batch
from tests.support import ingest_source

# mathtext: a command it does not know, an unclosed formula, a lone dollar, an underscore
ODD_NAMES = ["$\\foo$", "$x", "cost in $", "a_b^c", "100%", "{}\\"]


def own_folder(small_folder, root, sizes: dict[str, int], test_per_class: int = 2):
    """A folder of real CIFAR images with the given class names and train sizes."""
    sources = sorted((small_folder / "train").iterdir())
    for (name, count), source in zip(sizes.items(), sources, strict=False):
        for split, n in (("train", count), ("test", test_per_class)):
            target = root / split / name
            target.mkdir(parents=True)
            for image in sorted((small_folder / split / source.name).iterdir())[:n]:
                shutil.copy(image, target / image.name)
    return root


@pytest.mark.parametrize(
    ("labels", "count", "expected"),
    [
        ([0, 0, 0, 1, 1, 1], 4, [0, 3, 1, 4]),
        ([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1], 16, list(range(11))),
        ([1, 0, 1, 1, 1], 3, [0, 1, 2]),
    ],
)
def test_the_preview_takes_each_class_in_turn_whatever_its_size(labels, count, expected):
    from image_finetune.training.augment import preview_rows

    assert sorted(preview_rows(np.array(labels), count)) == sorted(expected)
    assert len(preview_rows(np.array(labels), count)) == min(count, len(labels))


def test_augment_previews_classes_of_6_and_5_images(small_folder, tmp_path):
    folder = own_folder(small_folder, tmp_path / "own", {"big": 7, "small": 6})
    data = DataParams(validation_fraction=0.1, min_validation_per_class=1)
    manifest = ingest_source(data, folder, tmp_path / "data")
    assert manifest["splits"]["train"]["per_class"] == {"big": 6, "small": 5}
    preview = preview_augmentation(Params(), tmp_path / "data", tmp_path / "augment")
    with Image.open(preview) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def rendered(path) -> bool:
    with Image.open(path) as image:
        return np.asarray(image).std() > 0  # drawn, not blank


def test_class_names_with_mathtext_are_drawn_as_written(tmp_path):
    matrix = np.arange(len(ODD_NAMES) ** 2).reshape(len(ODD_NAMES), -1)
    plot_confusion(matrix, ODD_NAMES, tmp_path / "confusion.png")
    assert rendered(tmp_path / "confusion.png")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(ODD_NAMES), 32, 32, 3), dtype=np.uint8)
    labels = np.arange(len(ODD_NAMES))
    probs = np.roll(np.eye(len(ODD_NAMES)), 1, axis=1) * 0.9 + 0.01  # every one wrong
    assert plot_gallery(images, labels, probs, ODD_NAMES, 6, tmp_path / "gallery.png") == 6
    assert rendered(tmp_path / "gallery.png")


def test_a_class_named_like_a_formula_is_ingested_and_plotted(small_folder, tmp_path):
    folder = own_folder(small_folder, tmp_path / "own", {"$\\foo$": 4, "plain": 4})
    data = DataParams(validation_fraction=0.25, min_validation_per_class=1)
    manifest = ingest_source(data, folder, tmp_path / "data")
    assert manifest["class_names"] == ["$\\foo$", "plain"]
    plot_confusion(np.array([[3, 1], [0, 4]]), manifest["class_names"], tmp_path / "cm.png")
    assert rendered(tmp_path / "cm.png")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A real (untrained) two-class Keras classifier of 32x32 images, saved as .keras."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    path = tmp_path_factory.mktemp("tiny") / "classifier.keras"
    model.save(path)
    return path


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def test_predict_batch_writes_a_row_for_every_file(small_folder, tiny_classifier, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((small_folder / "test" / "ship").iterdir())[0]
    shutil.copy(good, folder / "good.jpg")
    pixels = np.asarray(Image.open(good).convert("RGB"))
    (folder / "photo.webp").write_bytes(encoded(pixels, "WEBP"))
    (folder / "scan.bmp").write_bytes(encoded(pixels, "BMP"))
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "predictions.csv"
    assert predict_batch(Params(), folder, out, model=str(tiny_classifier)) == 5
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    assert sorted(rows) == ["broken.png", "good.jpg", "notes.txt", "photo.webp", "scan.bmp"]
    assert rows["good.jpg"]["error"] == "" and rows["good.jpg"]["predicted"] in {"0", "1"}
    assert "WEBP images are not accepted" in rows["photo.webp"]["error"]
    assert "BMP images are not accepted" in rows["scan.bmp"]["error"]
    assert "not an image file" in rows["notes.txt"]["error"]
    assert rows["broken.png"]["error"]
    assert all(rows[name]["predicted"] == "" for name in rows if name != "good.jpg")
