"""Params that look valid but would fail after minutes of work (a negative seed, an infinite
warm-up, a key written twice) are refused up front: exit 2 naming the key, from every
command and from ``check-params``."""

import typing

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from image_finetune.cli import app
from image_finetune.config import Params, load_params, parse_params
from image_finetune.errors import ConfigError

runner = CliRunner()
RUNG = {"name": "head"}


def bare(annotation):
    """``Annotated[float, ...]`` -> float."""
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def float_fields(model: type[BaseModel], prefix: tuple = ()) -> list[tuple]:
    """The path of every float param (a rung's through the ladder's first rung)."""
    paths = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        annotation = field.annotation
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += float_fields(annotation, (*prefix, key))
        elif typing.get_origin(annotation) is list and issubclass(inner[0], BaseModel):
            paths += float_fields(inner[0], (*prefix, key, 0))
        elif annotation is float or float in inner:
            paths.append((*prefix, key))
        elif typing.get_origin(annotation) is tuple and float in map(bare, inner):
            paths.append((*prefix, key, 0))
    return paths


def nested(path: tuple, value) -> dict:
    """``{"a": {"b": value}}`` for ("a", "b"); an index 0 inside a path is a one-rung
    ladder, at its end the first item of a (low, high) pair."""
    head, *rest = path
    if not rest:
        return {head: value}
    if rest == [0]:
        return {head: [value, 0.5]}
    if rest[0] == 0:
        return {head: [{**RUNG, **nested(tuple(rest[1:]), value)}]}
    return {head: nested(tuple(rest), value)}


def test_every_float_param_is_found():
    found = {".".join(map(str, p)) for p in float_fields(Params)}
    assert {
        "train.ladder.0.warmup_epochs",
        "train.ladder.0.weight_decay",
        "gate.max_latency_p95_ms",
        "validate.channel_mean_range.0",
    } <= found


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_float_param_takes_infinity_or_nan(value):
    for path in float_fields(Params):
        with pytest.raises(ConfigError) as caught:
            parse_params(nested(path, value))
        assert ".".join(map(str, path)) in str(caught.value), path


@pytest.mark.parametrize("spelling", [".inf", ".nan", "-.inf"])
def test_yaml_infinities_are_refused_for_warmup_and_weight_decay(tmp_path, spelling):
    for key in ("warmup_epochs", "weight_decay"):
        path = tmp_path / "params.yaml"
        path.write_text(f"train:\n  ladder:\n    - name: head\n      {key}: {spelling}\n")
        with pytest.raises(ConfigError, match=rf"train\.ladder\.0\.{key}"):
            load_params(path, use_env=False)


@pytest.mark.parametrize("section", ["data", "train"])
@pytest.mark.parametrize("seed", [-1, 2**32, 10**30])
def test_a_seed_outside_numpys_range_is_refused(section, seed):
    with pytest.raises(ConfigError, match=rf"{section}\.seed"):
        parse_params({section: {"seed": seed}})


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_the_seeds_at_the_edges_are_taken(seed):
    params = parse_params({"data": {"seed": seed}, "train": {"seed": seed}})
    assert params.data.seed == params.train.seed == seed


DUPLICATED = {
    "a section": ("gate:\n  min_accuracy: 0.5\ngate:\n  min_accuracy: 0.9\n", "gate", 3),
    "a key": ("data:\n  seed: 1\n  path: x\n  seed: 2\n", "seed", 4),
    "a rung's key": (
        "train:\n  ladder:\n    - name: head\n      epochs: 1\n      epochs: 9\n",
        "epochs",
        5,
    ),
}


@pytest.mark.parametrize("case", sorted(DUPLICATED))
def test_a_key_written_twice_is_refused_with_its_name_and_lines(tmp_path, case):
    text, key, line = DUPLICATED[case]
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"'{key}' appears twice .*line {line}"):
        load_params(path, use_env=False)


def test_a_merge_key_override_is_not_a_duplicate(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "train:\n  ladder:\n    - &rung {name: head, epochs: 2}\n"
        "    - <<: *rung\n      name: second\n      epochs: 3\n"
    )
    params = load_params(path, use_env=False)
    assert [(r.name, r.epochs) for r in params.train.ladder] == [("head", 2), ("second", 3)]


CLI_CASES = {
    "seed.yaml": ("data:\n  seed: -1\n", "data.seed"),
    "train-seed.yaml": ("train:\n  seed: 4294967296\n", "train.seed"),
    "inf.yaml": (
        "train:\n  ladder:\n    - name: head\n      warmup_epochs: .inf\n",
        "train.ladder.0.warmup_epochs",
    ),
    "nan.yaml": ("gate:\n  max_latency_p95_ms: .nan\n", "gate.max_latency_p95_ms"),
    "twice.yaml": ("train:\n  seed: 1\n  seed: 2\n", "'seed' appears twice"),
}


@pytest.mark.parametrize("file", sorted(CLI_CASES))
def test_check_params_catches_each_with_exit_2(tmp_path, file):
    text, message = CLI_CASES[file]
    (tmp_path / file).write_text(text)
    result = runner.invoke(app, ["check-params", "--params", str(tmp_path / file)])
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code == ConfigError.exit_code, output
    assert message in output and "Traceback" not in output, output


def test_check_params_names_every_bad_key_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "data:\n  seed: -1\ntrain:\n  seed: 4294967296\n  ladder:\n"
        "    - name: head\n      weight_decay: .inf\n"
    )
    result = runner.invoke(app, ["check-params", "--params", str(path)])
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code == ConfigError.exit_code, output
    for key in ("data.seed", "train.seed", "train.ladder.0.weight_decay"):
        assert f"  {key}: " in output, output
