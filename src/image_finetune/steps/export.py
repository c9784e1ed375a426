"""The ``export-savedmodel`` step: a TF Serving SavedModel of a classifier."""

from __future__ import annotations

from pathlib import Path

from image_finetune.inference import load_classifier


def export_savedmodel(model: Path, out: Path) -> Path:
    """Write a SavedModel whose ``serving_default`` signature takes uint8 images."""
    import keras
    import tensorflow as tf  # TensorFlow-only: imported where used

    classifier = load_classifier(model)
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    # training=False spelled out: Keras' random augmentation layers default to training mode
    # when called without it, which is what a plain model.export() does.
    archive.add_endpoint(
        "serving_default", lambda images: classifier(images, training=False),
        input_signature=[tf.TensorSpec((None, *classifier.input_shape[1:]), tf.uint8,
                                       name="image")])
    archive.write_out(str(out), verbose=False)
    return out
