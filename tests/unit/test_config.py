"""params.yaml -> typed config: defaults, clear errors, environment overrides."""

from pathlib import Path

import pytest
import yaml

from image_finetune.config import DATA_ENV, WEIGHTS_ENV, Params, load_params
from image_finetune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, content: dict | str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


MINIMAL = {"train": {"ladder": [{"name": "head"}]}}


def test_the_projects_params_file_is_valid():
    params = load_params(ROOT / "params.yaml", use_env=False)
    assert params.data.source == params.model.weights == "auto"  # local copies, else downloads
    assert len(params.train.ladder) >= 2
    assert params.train.ladder[0].unfreeze_from is None


def test_the_code_defaults_are_the_params_file_one_source_of_defaults():
    """Every value params.yaml sets is the typed config's default, and vice versa: a key left
    out of params.yaml means what the file says it means."""
    from_file = load_params(ROOT / "params.yaml", use_env=False).model_dump(by_alias=True)
    defaults = Params().model_dump(by_alias=True)
    differences = {
        f"{section}.{key}": (value, defaults[section].get(key))
        for section, values in from_file.items()
        for key, value in values.items()
        if defaults[section].get(key) != value
    }
    assert differences == {}
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(defaults)  # every section spelled out in the file


def test_unknown_key_is_named_with_its_path(tmp_path):
    bad = {**MINIMAL, "data": {"sourse": "folder"}}
    with pytest.raises(ConfigError, match=r"data\.sourse: Extra inputs are not permitted"):
        load_params(write(tmp_path, bad))


def test_wrong_type_is_named(tmp_path):
    bad = {"train": {"ladder": [{"name": "head", "epochs": "many"}]}}
    with pytest.raises(ConfigError, match=r"train\.ladder\.0\.epochs"):
        load_params(write(tmp_path, bad))


def test_out_of_range_value_is_named(tmp_path):
    bad = {**MINIMAL, "data": {"validation_fraction": 1.5}}
    with pytest.raises(ConfigError, match=r"data\.validation_fraction: Input should be less"):
        load_params(write(tmp_path, bad))


def test_unknown_source_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_params(write(tmp_path, {**MINIMAL, "data": {"source": "imagenet"}}))


def test_inverted_range_is_rejected(tmp_path):
    bad = {**MINIMAL, "validate": {"channel_mean_range": [0.8, 0.2]}}
    with pytest.raises(ConfigError, match="channel_mean_range: lower bound"):
        load_params(write(tmp_path, bad))


def test_duplicate_rung_names_are_rejected(tmp_path):
    bad = {"train": {"ladder": [{"name": "a"}, {"name": "a"}]}}
    with pytest.raises(ConfigError, match="rung names must be unique"):
        load_params(write(tmp_path, bad))


def test_empty_ladder_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.ladder"):
        load_params(write(tmp_path, {"train": {"ladder": []}}))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "data: [unclosed"))
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(write(tmp_path, "- a\n- b\n"))


def test_environment_overrides_data_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, "/data/cifar.tar.gz")
    monkeypatch.setenv(WEIGHTS_ENV, "/weights/w.h5")
    params = load_params(write(tmp_path, MINIMAL))
    assert params.data.path == "/data/cifar.tar.gz"
    assert params.model.weights == "/weights/w.h5"
    assert load_params(write(tmp_path, MINIMAL), use_env=False).data.path != "/data/cifar.tar.gz"


def test_digest_changes_with_any_value(tmp_path):
    first = load_params(write(tmp_path, MINIMAL), use_env=False).digest()
    changed = {"train": {"ladder": [{"name": "head", "epochs": 2}]}}
    assert first != load_params(write(tmp_path, changed), use_env=False).digest()
    assert first == load_params(write(tmp_path, MINIMAL), use_env=False).digest()


@pytest.mark.parametrize("train_size,batch,epochs", [(45_000, 256, 8), (180, 23, 38), (5, 1, 60)])
def test_a_rung_adapts_its_batch_and_epochs_to_the_data(train_size, batch, epochs):
    from image_finetune.config import Rung
    from image_finetune.training.plan import adapt_rung

    rung = Rung(name="head", epochs=8, batch_size=256, min_steps=300)
    adapted = adapt_rung(rung, train_size)
    assert (adapted.batch_size, adapted.epochs) == (batch, epochs)
    steps = adapted.epochs * -(-train_size // adapted.batch_size)
    assert steps >= rung.min_steps


def test_a_rung_that_does_not_ask_stays_as_written():
    from image_finetune.config import Rung
    from image_finetune.training.plan import adapt_rung

    rung = Rung(name="as-written", epochs=2, batch_size=256)
    assert adapt_rung(rung, 180) == rung
