"""The ``ingest`` step (DVC stage ``ingest``)."""

from kfp.dsl import Dataset, Output

from components.runtime import step


@step
def ingest_data(data: str, dataset: Output[Dataset]) -> None:
    """Read the data source and write canonical train/validation/test arrays.

    A relative ``data.path`` is resolved against the working directory (the project root
    in the images and under ``run-local``).
    """
    from pathlib import Path

    from image_finetune.config import DataParams, resolve_path
    from image_finetune.data.ingest import ingest

    params = DataParams.model_validate_json(data)
    manifest = ingest(params, resolve_path(params.path, Path.cwd()), Path(dataset.path))
    dataset.metadata["class_names"] = manifest["class_names"]
    dataset.metadata["splits"] = {name: split["count"]
                                  for name, split in manifest["splits"].items()}
