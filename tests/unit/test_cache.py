"""The training cache: where it lives (one per project, whatever copy of the project a DVC
experiment runs in), its locks (a prune never removes what a run uses; two writers of one
entry take turns), its keys (nothing is trusted without one), and `image-finetune cache
ls|prune` with its errors."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from image_finetune.cache import (
    ATTEMPTS,
    CHECKPOINTS,
    FEATURES,
    cache_location,
    claim_entry,
    entry_for_removal,
    entry_in_use,
    entry_writing,
    holds_key,
    list_entries,
    parse_duration,
    parse_size,
    write_key,
)
from image_finetune.cli import app
from image_finetune.errors import ConfigError
from image_finetune.steps.manage_cache import list_cache, prune_cache

DEFAULT = Path(".cache/image_finetune")
DAY = 86400
KEYS = {name: f"{index:016x}" for index, name in enumerate("abcdef", start=10)}


# -- where it lives --------------------------------------------------------------------------


def test_the_default_cache_is_in_the_projects_root(tmp_path):
    assert cache_location(DEFAULT, tmp_path, {}) == tmp_path / DEFAULT


def test_a_dvc_experiment_run_in_a_copy_shares_the_projects_cache(tmp_path):
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert cache_location(DEFAULT, copy, {"DVC_ROOT": str(tmp_path)}) == tmp_path / DEFAULT


def test_the_environment_moves_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    environ = {"IMAGE_FINETUNE_CACHE": "~/big-disk/cache", "DVC_ROOT": str(tmp_path)}
    assert (
        cache_location(DEFAULT, tmp_path / "copy", environ)
        == tmp_path / "home" / "big-disk" / "cache"
    )
    relative = {"IMAGE_FINETUNE_CACHE": "shared", "DVC_ROOT": str(tmp_path)}
    assert cache_location(DEFAULT, tmp_path / "copy", relative) == tmp_path / "shared"


def test_a_cache_named_on_the_command_line_wins_over_the_environment(tmp_path):
    environ = {"IMAGE_FINETUNE_CACHE": str(tmp_path / "moved")}
    assert cache_location(tmp_path / "mine", tmp_path, environ) == tmp_path / "mine"
    assert cache_location(Path("mine"), tmp_path, environ) == tmp_path / "mine"


# -- entries ---------------------------------------------------------------------------------


def make_entry(cache: Path, kind: str, key: str, size: int, used_days_ago: float) -> None:
    folder = cache / kind / key
    folder.mkdir(parents=True)
    write_key(folder, key, f"{kind} test")
    (folder / "data.bin").write_bytes(b"x" * size)
    with entry_in_use(cache, key):
        pass
    then = time.time() - used_days_ago * DAY
    os.utime(cache / "locks" / f"{key}.use.lock", (then, then))
    for path in (folder, folder / "data.bin", folder / "key.json"):
        os.utime(path, (then, then))


@pytest.fixture
def cache(tmp_path) -> Path:
    """Four entries: features a (1 MiB, used 40 days ago), attempt b (2 MiB, 10 days),
    features c (1 MiB, 5 days), checkpoints d (1 KiB, 1 day)."""
    root = tmp_path / "cache"
    make_entry(root, FEATURES, KEYS["a"], 1 << 20, 40)
    make_entry(root, ATTEMPTS, KEYS["b"], 2 << 20, 10)
    make_entry(root, FEATURES, KEYS["c"], 1 << 20, 5)
    make_entry(root, CHECKPOINTS, KEYS["d"], 1 << 10, 1)
    return root


def keys_of(entries) -> list[str]:
    return [entry.key for entry in entries]


def test_entries_are_listed_least_recently_used_first_with_their_sizes(cache):
    entries = list_entries(cache)
    assert keys_of(entries) == [KEYS[k] for k in "abcd"]
    assert [e.kind for e in entries] == [FEATURES, ATTEMPTS, FEATURES, CHECKPOINTS]
    assert entries[1].size > 2 << 20 and entries[1].what == "attempts test"
    lines = list_cache(cache)
    assert lines[0].startswith(f"cache {cache}: 4 entries, 4.0M")
    assert KEYS["b"] in lines[3] and "2.0M" in lines[3] and "10d" in lines[3]


def test_an_entry_is_marked_used_when_a_run_uses_it(cache):
    with entry_in_use(cache, KEYS["a"]):
        pass
    assert keys_of(list_entries(cache))[-1] == KEYS["a"]


def test_prune_by_age_removes_what_was_unused_for_longer(cache):
    outcome = prune_cache(cache, "7d", None)
    assert keys_of(outcome.removed) == [KEYS["a"], KEYS["b"]]
    assert keys_of(list_entries(cache)) == [KEYS["c"], KEYS["d"]]
    assert not (cache / FEATURES / KEYS["a"]).exists()
    assert not (cache / "locks" / f"{KEYS['a']}.use.lock").exists()


def test_prune_by_size_removes_the_least_recently_used_until_the_cache_fits(cache):
    outcome = prune_cache(cache, None, "1.5M")
    assert keys_of(outcome.removed) == [KEYS["a"], KEYS["b"]]
    assert outcome.size_left < 1.5 * (1 << 20)
    assert prune_cache(cache, None, "10G").removed == []


def test_prune_never_removes_an_entry_in_use(cache):
    with entry_in_use(cache, KEYS["a"]):
        outcome = prune_cache(cache, "0s", None)
        assert keys_of(outcome.in_use) == [KEYS["a"]]
        assert (cache / FEATURES / KEYS["a"] / "data.bin").exists()
        assert "in use" in next(line for line in list_cache(cache) if KEYS["a"] in line)
    assert keys_of(outcome.removed) == [KEYS[k] for k in "bcd"]


def test_staging_left_by_a_killed_writer_goes_with_its_entry(cache):
    staging = cache / ATTEMPTS / f".{KEYS['b']}.1a2b3c4d"
    staging.mkdir()
    (staging / "model.keras").write_bytes(b"half")
    [entry] = [e for e in list_entries(cache) if e.key == KEYS["b"]]
    assert staging in entry.paths
    prune_cache(cache, "7d", None)
    assert not staging.exists()


def test_a_run_waiting_for_an_entry_a_prune_removes_holds_the_new_lock(cache):
    """The lock file is removed with its entry: a run that waited on the old file must hold
    the new one, or a second prune could remove the entry it then writes."""
    entered = threading.Event()
    leave = threading.Event()

    def run():
        with entry_in_use(cache, KEYS["a"]):
            entered.set()
            leave.wait(10)

    with entry_for_removal(cache, KEYS["a"]) as free:
        assert free
        waiting = threading.Thread(target=run)
        waiting.start()
        time.sleep(0.2)
        assert not entered.is_set()  # it waits for the prune
        (cache / "locks" / f"{KEYS['a']}.use.lock").unlink()
    assert entered.wait(10)
    with entry_for_removal(cache, KEYS["a"]) as free:
        assert not free  # the run holds the file that is there now
    leave.set()
    waiting.join(10)


def test_two_writers_of_one_entry_take_turns(tmp_path):
    order = []

    def write(name):
        with entry_writing(tmp_path, KEYS["e"]):
            order.append(f"{name} in")
            time.sleep(0.3)
            order.append(f"{name} out")

    threads = [threading.Thread(target=write, args=(n,)) for n in ("first", "second")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(10)
    assert order == ["first in", "first out", "second in", "second out"]


# -- keys ------------------------------------------------------------------------------------


def test_an_entry_is_trusted_only_with_its_key(tmp_path):
    folder = tmp_path / FEATURES / KEYS["f"]
    folder.mkdir(parents=True)
    (folder / "train.npy").write_bytes(b"from an older layout, or half made")
    assert not holds_key(folder, KEYS["f"])
    claim_entry(folder, KEYS["f"], "test")
    assert holds_key(folder, KEYS["f"]) and not (folder / "train.npy").exists()
    assert not holds_key(folder, KEYS["a"])
    (folder / "key.json").write_text("not json")
    assert not holds_key(folder, KEYS["f"])


def test_damaged_cached_activations_are_computed_again(tmp_path):
    import keras

    from image_finetune.training.features import FrozenPart, cached_activations

    flatten = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten()])
    stem = FrozenPart(flatten, "tensorflow", tmp_path / "engine")
    images = np.arange(4 * 12, dtype="uint8").reshape(4, 2, 2, 3)
    path = tmp_path / "train.npy"
    np.save(path, np.zeros((4, 12), "float32"))
    path.write_bytes(path.read_bytes()[:-20])  # truncated: a foreign or damaged file
    values = cached_activations(stem, images, path, 2, "embed test")
    np.testing.assert_allclose(values, images.reshape(4, 12).astype("float32"))
    np.save(path, np.zeros((3, 12), "float32"))  # whole, but not one row per image
    assert len(cached_activations(stem, images, path, 2, "embed test")) == 4


# -- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30d", 30 * DAY),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 14 * DAY),
        ("1.5h", 5400),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text, size",
    [
        ("500M", 500 << 20),
        ("10G", 10 << 30),
        ("1.5GiB", 3 << 29),
        ("2T", 2 << 40),
        ("4096", 4096),
        ("64kb", 64 << 10),
    ],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "30", "-1d", "3x", "1e400d", "d", "9" * 400 + "d"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["", "10Q", "-5G", "G", "1e3M", "9" * 400])
def test_bad_sizes(text):
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(text)


def cli(tmp_path, *args):
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    return CliRunner().invoke(app, ["cache", *args, "--params", str(params)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", "--older-than", "soon"], "--older-than 'soon': not a duration"),
        (["prune", "--max-size", "huge"], "--max-size 'huge': not a size"),
        (["prune"], "say what to remove"),
        (["ls", "--max-size", "1G"], "are prune's options"),
    ],
)
def test_the_command_refuses_bad_options_with_exit_code_2(tmp_path, args, message):
    result = cli(tmp_path, *args)
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code == 2 and message in output and "Traceback" not in output, output


def test_the_command_lists_and_prunes_the_projects_cache(cache, tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGE_FINETUNE_CACHE", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    listed = cli(tmp_path, "ls", "--cache", "cache")
    assert listed.exit_code == 0 and KEYS["a"] in listed.output, listed.output
    pruned = cli(tmp_path, "prune", "--older-than", "20d", "--cache", "cache")
    assert pruned.exit_code == 0 and f"removed features {KEYS['a']}" in pruned.output
    assert keys_of(list_entries(cache)) == [KEYS[k] for k in "bcd"]
