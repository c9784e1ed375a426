"""The reference profile a model version carries: its summaries of held-out validation
images (class probabilities, the pooled embedding projected by a PCA fitted on training
features, image statistics) and the projection itself, so that live windows are summarised
and projected exactly as the reference was. Saved as one small JSON and one .npz."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from image_finetune.errors import MissingInputError
from image_finetune.monitoring.summaries import IMAGE_STATISTICS

PROFILE_FOLDER = "reference_profile"  # its folder in a step's output and in a version's run
PROFILE_JSON = "profile.json"
PROFILE_ARRAYS = "profile.npz"
FORMAT_VERSION = 1
ARRAYS = ("probabilities", "projected", "image_stats", "mean", "components")
MAX_JSON_BYTES = 1_000_000  # a profile's JSON holds names and counts only


class ProfileError(MissingInputError, ValueError):
    """A profile folder that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ReferenceProfile:
    """Summaries of the reference images and the projection that made them."""

    class_names: tuple[str, ...]
    probabilities: np.ndarray  # [n, C]
    projected: np.ndarray  # [n, k]
    image_stats: np.ndarray  # [n, len(IMAGE_STATISTICS)]
    mean: np.ndarray  # [D] embedding mean of the training features
    components: np.ndarray  # [k, D] principal axes (rows orthonormal)
    model_version: str | None = None
    # What computed the summaries: live windows are comparable only when summarised on the
    # same engine at the same precision (int8 moves the embedding by ~20%, RMS).
    engine: str = "tensorflow"
    precision: str = "fp32"

    def __post_init__(self):
        n, classes = self.probabilities.shape
        k, dims = self.components.shape
        expected = {
            "probabilities": (n, len(self.class_names)),
            "projected": (n, k),
            "image_stats": (n, len(IMAGE_STATISTICS)),
            "mean": (dims,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ProfileError(
                    f"profile {name} has shape {getattr(self, name).shape}, expected {shape}"
                )
        if n < 2:
            raise ProfileError(f"a reference profile needs 2 images at least, has {n}")

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def dimensions(self) -> int:
        """k: the projected embedding's width."""
        return self.components.shape[0]

    def project(self, embedding: np.ndarray) -> np.ndarray:
        """float32 [N, k]: pooled embeddings [N, D] in the profile's PCA coordinates."""
        embedding = np.asarray(embedding, dtype=np.float32)
        if embedding.ndim != 2 or embedding.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"embeddings of shape {embedding.shape} do not fit a profile of "
                f"{self.mean.shape[0]} dimensions"
            )
        return ((embedding - self.mean) @ self.components.T).astype(np.float32)

    def save(self, folder: Path) -> Path:
        """Write ``profile.json`` and ``profile.npz`` into ``folder``; the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            folder / PROFILE_ARRAYS,
            **{name: getattr(self, name).astype(np.float32) for name in ARRAYS},
        )
        (folder / PROFILE_JSON).write_text(
            json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "class_names": list(self.class_names),
                    "model_version": self.model_version,
                    "engine": self.engine,
                    "precision": self.precision,
                    "images": len(self),
                    "dimensions": self.dimensions,
                    "image_statistics": list(IMAGE_STATISTICS),
                    "summary": self.summary(),
                },
                indent=2,
            )
            + "\n"
        )
        return folder

    @classmethod
    def load(cls, folder: Path) -> ReferenceProfile:
        """The profile saved in ``folder``; a ProfileError says what is wrong with it."""
        folder = Path(folder)
        for name in (PROFILE_JSON, PROFILE_ARRAYS):
            if not (folder / name).is_file():
                raise ProfileError(f"{folder}: no {name} (not a reference profile folder)")
        if (folder / PROFILE_JSON).stat().st_size > MAX_JSON_BYTES:
            raise ProfileError(f"{folder / PROFILE_JSON}: too large for a profile")
        try:
            meta = json.loads((folder / PROFILE_JSON).read_text())
            with np.load(folder / PROFILE_ARRAYS, allow_pickle=False) as stored:
                arrays = {name: np.asarray(stored[name], dtype=np.float32) for name in ARRAYS}
        except (ValueError, KeyError, OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{folder}: unreadable reference profile ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise ProfileError(
                f"{folder}: profile format {meta.get('format_version')!r} is not {FORMAT_VERSION}"
                if isinstance(meta, dict)
                else f"{folder}: {PROFILE_JSON} is not an object"
            )
        if list(meta.get("image_statistics", [])) != list(IMAGE_STATISTICS):
            raise ProfileError(
                f"{folder}: profile statistics {meta.get('image_statistics')} "
                f"are not {list(IMAGE_STATISTICS)}"
            )
        names = meta.get("class_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProfileError(f"{folder}: class_names must be a list of strings")
        version = meta.get("model_version")
        return cls(
            class_names=tuple(names),
            model_version=None if version is None else str(version),
            engine=str(meta.get("engine", "tensorflow")),  # older profiles: Keras fp32
            precision=str(meta.get("precision", "fp32")),
            **arrays,
        )

    def with_version(self, model_version: str) -> ReferenceProfile:
        """The same profile, tagged with the version it belongs to."""
        return replace(self, model_version=model_version)

    def summary(self) -> dict:
        """Readable figures: predicted-class histogram, confidence and statistics quantiles."""
        predicted = np.bincount(self.probabilities.argmax(axis=1), minlength=len(self.class_names))
        confidence = self.probabilities.max(axis=1)
        quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)

        def spread(values):
            return {
                "mean": round(float(values.mean()), 6),
                **{
                    f"q{int(q * 100):02d}": round(float(np.quantile(values, q)), 6)
                    for q in quantiles
                },
            }

        return {
            "predicted_classes": dict(zip(self.class_names, map(int, predicted), strict=True)),
            "confidence": spread(confidence),
            **{name: spread(self.image_stats[:, i]) for i, name in enumerate(IMAGE_STATISTICS)},
        }


def fit_projection(embeddings: np.ndarray, dimensions: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """PCA of training embeddings [N, D]: (mean [D], components [k, D]), k = min(dimensions,
    N - 1, D). Deterministic: each axis's sign is fixed (largest loading positive)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"PCA needs [N >= 2, D] embeddings, got {embeddings.shape}")
    if dimensions < 1:
        raise ValueError(f"the projection needs 1 dimension at least, not {dimensions}")
    mean = embeddings.mean(axis=0)
    centred = embeddings - mean
    # The scatter matrix's eigenvectors, largest first: the SVD's axes at a fifth of its time
    # (D x D, not N x D; float64, so squaring the condition number costs nothing at k <= 32).
    _, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, ::-1].T[: min(dimensions, len(embeddings) - 1, embeddings.shape[1])]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return mean.astype(np.float32), (axes * signs[:, None]).astype(np.float32)


def build_profile(
    class_names: list[str] | tuple[str, ...],
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    image_stats: np.ndarray,
    training_embeddings: np.ndarray,
    dimensions: int = 32,
    model_version: str | None = None,
    summarised_on: tuple[str, str] = ("tensorflow", "fp32"),
) -> ReferenceProfile:
    """A profile from the reference (validation) summaries and a PCA fitted on training
    embeddings (never on the reference itself, so its spread is measured, not fitted)."""
    mean, components = fit_projection(training_embeddings, dimensions)
    projected = (np.asarray(embeddings, dtype=np.float32) - mean) @ components.T
    return ReferenceProfile(
        tuple(class_names),
        np.asarray(probabilities, dtype=np.float32),
        projected.astype(np.float32),
        np.asarray(image_stats, dtype=np.float32),
        mean,
        components,
        model_version,
        *summarised_on,
    )
