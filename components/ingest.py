"""The ``ingest`` step (DVC stage ``ingest``)."""

from kfp.dsl import Dataset, Input, Output

from image_finetune.components.runtime import component, read_params


@component
def ingest_data(data: dict, dataset: Output[Dataset], extra: Input[Dataset] = None) -> None:
    """Read the data source and write canonical train/validation/test arrays.

    A relative ``data.path`` is resolved against the working directory (the project root
    in the images and under ``run-local``). ``extra``: an image-folder tree of labelled
    images (a feedback export) added to train, as one more of ``data.extra_paths``.
    """
    from pathlib import Path

    from image_finetune.steps.ingest import ingest_data

    if extra is not None:
        data = {**data, "extra_paths": [*data.get("extra_paths", []), extra.path]}

    manifest = ingest_data(read_params(data=data), Path(dataset.path), Path.cwd())
    dataset.metadata["class_names"] = manifest["class_names"]
    dataset.metadata["splits"] = {
        name: split["count"] for name, split in manifest["splits"].items()
    }
