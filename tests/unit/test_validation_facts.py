"""The data validation's pixel facts."""

from __future__ import annotations

import numpy as np

from image_finetune.validation.facts import ChannelMoments


def test_channel_moments_of_uint8_images_equal_the_float_sums():
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for n in (5, 9)]
    exact, floats = ChannelMoments(), ChannelMoments()
    for chunk in chunks:
        exact.add(chunk)
        floats.add(chunk.astype(np.float32))  # another dtype: summed as floats
    pixels = np.concatenate(chunks).reshape(-1, 3) / 255.0
    for moments in (exact, floats):
        rows = moments.rows("train")
        np.testing.assert_allclose([r["mean"] for r in rows], pixels.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose([r["std"] for r in rows], pixels.std(axis=0), rtol=1e-9)
