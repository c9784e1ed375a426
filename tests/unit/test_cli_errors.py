"""Every `image-finetune` command, given a bad params file or bad options, says what is wrong
and exits with its documented code: never a traceback."""

import typer.main
from typer.testing import CliRunner

from image_finetune.cli import app
from image_finetune.errors import ConfigError, MissingInputError

COMMANDS = typer.main.get_command(app).commands
WITH_PARAMS = sorted(
    name for name, command in COMMANDS.items() if any("--params" in p.opts for p in command.params)
)
# required positional arguments
ARGUMENTS = {
    "promote": ["7"],
    "predict-batch": ["images"],
    "monitor": ["images"],
    "cache": ["ls"],
    "rollout": ["status"],
}
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_clean_failure(result, code: int, message: str) -> None:
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code == code, output
    assert message in output, output
    assert "Traceback" not in output


def test_every_command_but_export_reads_a_params_file():
    # serve: flags and environment only; feedback: the server's store, no params
    assert set(COMMANDS) - set(WITH_PARAMS) <= {"export-savedmodel", "serve", "feedback"}


def test_a_params_file_that_is_a_folder(tmp_path):
    for name in WITH_PARAMS:
        result = invoke(name, *ARGUMENTS.get(name, []), "--params", str(tmp_path))
        assert_clean_failure(result, ConfigError.exit_code, "is a directory, not a params file")


def test_a_params_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"data:\n  path: caf\xe9\n")
    for name in WITH_PARAMS:
        result = invoke(name, *ARGUMENTS.get(name, []), "--params", str(bad))
        assert_clean_failure(result, ConfigError.exit_code, "not UTF-8 text")


def test_a_params_file_that_is_not_yaml_or_not_a_mapping_or_missing(tmp_path):
    cases = {
        "broken.yaml": ("data: [unclosed", "not valid YAML"),
        "list.yaml": ("- a\n- b\n", "expected a mapping of sections"),
        "typo.yaml": ("gate:\n  min_acuracy: 0.9\n", "gate.min_acuracy: Extra inputs"),
    }
    for file, (text, message) in cases.items():
        (tmp_path / file).write_text(text)
        for name in WITH_PARAMS:
            result = invoke(name, *ARGUMENTS.get(name, []), "--params", str(tmp_path / file))
            assert_clean_failure(result, ConfigError.exit_code, message)
    for name in WITH_PARAMS:
        result = invoke(name, *ARGUMENTS.get(name, []), "--params", str(tmp_path / "none.yaml"))
        assert_clean_failure(result, ConfigError.exit_code, "file not found")


def test_an_unknown_option_is_a_usage_error():
    for name in COMMANDS:
        result = invoke(name, *ARGUMENTS.get(name, []), "--no-such-option")
        assert_clean_failure(result, 2, "No such option")


def test_missing_inputs_name_the_step_to_run_first(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    nothing = str(tmp_path / "nothing")
    cases = {
        "validate": ["--data", nothing, "--out", str(tmp_path / "v")],
        "augment": ["--data", nothing, "--out", str(tmp_path / "a")],
        "train": ["--data", nothing, "--validation", nothing, "--out", str(tmp_path / "m")],
        "evaluate": ["--data", nothing, "--model", nothing, "--out", str(tmp_path / "e")],
        "export-savedmodel": ["--model", nothing, "--out", str(tmp_path / "s")],
    }
    for name, options in cases.items():
        args = options if name == "export-savedmodel" else [*options, "--params", str(params)]
        result = invoke(name, *args)
        assert_clean_failure(result, MissingInputError.exit_code, nothing)


def test_feedback_export_without_a_store_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGE_FINETUNE_FEEDBACK_URI", raising=False)
    assert_clean_failure(
        invoke("feedback", "export", "--out", str(tmp_path / "out")),
        ConfigError.exit_code,
        "no feedback store",
    )
    missing = tmp_path / "none.db"
    assert_clean_failure(
        invoke(
            "feedback", "export", "--feedback-uri", str(missing), "--out", str(tmp_path / "out")
        ),
        MissingInputError.exit_code,
        "no feedback store at",
    )
    assert not missing.exists()  # a typo creates nothing
