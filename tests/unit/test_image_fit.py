"""What a model's clients do with images of another size, from its training data's policy."""

import pytest

from image_finetune.inference import image_fit


@pytest.mark.parametrize(
    ("ingested", "used"),
    [
        ("reject", "resize"),  # a client cannot refuse a photo for its size: stretched
        ("resize", "resize"),
        ("center_crop", "center_crop"),
    ],
)
def test_a_model_is_used_as_its_data_was_fitted(ingested, used):
    assert image_fit({"params": {"on_wrong_size": ingested}}) == used


def test_a_manifest_from_before_the_policy_was_recorded_means_stretched():
    assert image_fit({"class_names": ["a", "b"]}) == "resize"
