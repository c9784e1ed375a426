"""Promotion under the lock, rollback through the history, and the registry's errors, on
a real MLflow store of each test's own (sqlite; the server tier runs the same on
PostgreSQL in test_registry.py). Processes race for real: the lock's log shows who held it
when."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from image_finetune.cli import app
from image_finetune.config import RegistryParams
from image_finetune.registry.client import RegistryError, client_for
from image_finetune.registry.lock import LOCK_INFIX, LockTiming, PromotionLock
from image_finetune.registry.promotion import promote, promotion_history, rollback
from image_finetune.registry.versions import CHAMPION, version_by_alias

NAME = "lock-test"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """An MLflow store with three READY versions of NAME, made once (its schema migrations
    take seconds); each test gets a copy of its own."""
    folder = tmp_path_factory.mktemp("template")
    client = client_for(
        RegistryParams(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", model_name=NAME)
    )
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, f"file://{folder}/artifacts")
    return folder / "mlflow.db"


@pytest.fixture
def store(template, tmp_path, monkeypatch) -> RegistryParams:
    """A registry of this test's own (MLFLOW_TRACKING_URI, which would override the
    commands' params, unset: the server tests of this module set it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(template, tmp_path / "mlflow.db")
    return RegistryParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_name=NAME)


def champion(params: RegistryParams) -> str | None:
    found = version_by_alias(client_for(params), params.model_name, CHAMPION)
    return str(found.version) if found else None


def test_rollback_walks_the_history_back_one_champion_per_call(store):
    for version in ("1", "2", "3"):
        promote(store, version, f"release {version}")
    assert rollback(store, "bad 3")["version"] == "2" and champion(store) == "2"
    assert rollback(store, "bad 2")["version"] == "1" and champion(store) == "1"
    with pytest.raises(
        RegistryError, match="first in the promotion history: there is nothing to roll back to"
    ):
        rollback(store, "one too many")
    assert champion(store) == "1"
    promote(store, "3", "fixed")
    assert rollback(store, "again")["version"] == "1"  # 2 was rolled back: not restored
    actions = [(e["action"], e["version"]) for e in promotion_history(store)]
    assert actions == [
        ("promote", "1"),
        ("promote", "2"),
        ("promote", "3"),
        ("rollback", "2"),
        ("rollback", "1"),
        ("promote", "3"),
        ("rollback", "1"),
    ]


def test_a_champion_moved_behind_the_registrys_back_is_not_rolled_back_blindly(store):
    promote(store, "1", "release")
    promote(store, "2", "release")
    client_for(store).set_registered_model_alias(NAME, CHAMPION, "3")
    with pytest.raises(RegistryError, match="was not set by a recorded promotion"):
        rollback(store, "which one?")


@pytest.mark.parametrize(
    "version,message", [("99", "has no version '99'"), ("abc", "has no version 'abc'")]
)
def test_promoting_a_missing_version_is_a_registry_error_with_its_exit_code(
    store, tmp_path, version, message
):
    params = tmp_path / "params.yaml"
    params.write_text(f"registry:\n  tracking_uri: {store.tracking_uri}\n  model_name: {NAME}\n")
    result = CliRunner().invoke(app, ["promote", version, "--params", str(params)])
    assert result.exit_code == RegistryError.exit_code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert champion(store) is None


def test_no_champion_to_roll_back_is_a_registry_error(store):
    with pytest.raises(RegistryError, match="has no champion to roll back"):
        rollback(store)


HOLDER = """
import sys, time
from image_finetune.config import RegistryParams
from image_finetune.registry.client import client_for
from image_finetune.registry.lock import LockTiming, PromotionLock
uri, name, log, hold, rounds, lease = sys.argv[1:7]
client = client_for(RegistryParams(tracking_uri=uri, model_name=name))
for _ in range(int(rounds)):
    with PromotionLock(client, name, LockTiming(timeout=300, lease=float(lease), poll=0.05)):
        with open(log, "a") as handle:
            handle.write(f"enter {time.time():.6f}\\n")
        print("holding", flush=True)
        time.sleep(float(hold))
        with open(log, "a") as handle:
            handle.write(f"exit {time.time():.6f}\\n")
"""


def holder(store: RegistryParams, log: Path, hold: float, rounds: int = 1, lease: float = 30):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            store.tracking_uri,
            NAME,
            str(log),
            str(hold),
            str(rounds),
            str(lease),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def intervals(log: Path) -> list[tuple[float, float]]:
    events = [line.split() for line in log.read_text().splitlines()]
    spans, opened = [], None
    for kind, at in events:
        assert (kind == "enter") == (opened is None), f"two holders at once:\n{log.read_text()}"
        if kind == "enter":
            opened = float(at)
        else:
            spans.append((opened, float(at)))
            opened = None
    return spans


def test_racing_processes_hold_the_lock_one_at_a_time(store, tmp_path):
    log = tmp_path / "lock.log"
    racers = [holder(store, log, hold=0.3, rounds=3) for _ in range(4)]
    assert [r.wait(timeout=600) for r in racers] == [0] * 4
    spans = intervals(log)
    assert len(spans) == 12
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_a_live_holder_keeps_the_lock_past_its_lease(store, tmp_path):
    log = tmp_path / "lock.log"
    # 2 s: a lease a loaded CI machine's scheduling cannot stall a heartbeat for.
    first = holder(store, log, hold=6.0, lease=2.0)  # renews every third of its lease
    assert first.stdout.readline().strip() == "holding"
    client = client_for(store)
    start = time.monotonic()
    with PromotionLock(client, NAME, LockTiming(timeout=60, lease=2.0, poll=0.05)):
        waited = time.monotonic() - start
    assert first.wait(timeout=60) == 0
    assert waited > 4.5, f"the live holder's lock was broken after {waited:.1f} s"


def test_a_dead_holders_lock_is_broken_after_its_lease(store, tmp_path, caplog):
    log = tmp_path / "lock.log"
    dead = holder(store, log, hold=600, lease=1.0)
    assert dead.stdout.readline().strip() == "holding"
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait()
    start = time.monotonic()
    with PromotionLock(client_for(store), NAME, LockTiming(timeout=60, lease=1.0, poll=0.05)):
        waited = time.monotonic() - start
        held = lock_models(store)
    assert 1.0 <= waited < 20
    assert "breaking the stale promotion lock" in caplog.text
    assert held == [f"{NAME}{LOCK_INFIX}2"]  # the dead one pruned
    assert lock_models(store) == []  # and nothing of the lock left once released


def lock_models(store: RegistryParams) -> list[str]:
    """The lock's registered models (in the Models list while the lock is held)."""
    prefix = f"{store.model_name}{LOCK_INFIX}"
    found = client_for(store).search_registered_models(f"name LIKE '{prefix}%'")
    return sorted(m.name for m in found if m.name.startswith(prefix))


def test_waiting_for_the_lock_ends_at_its_deadline(store, tmp_path):
    log = tmp_path / "lock.log"
    busy = holder(store, log, hold=30, lease=10.0)  # never stale within the waiter's 2 s
    assert busy.stdout.readline().strip() == "holding"
    start = time.monotonic()
    with pytest.raises(
        RegistryError, match="could not acquire the promotion lock of lock-test within 2 s"
    ):
        PromotionLock(client_for(store), NAME, LockTiming(timeout=2, lease=1.0, poll=0.1)).acquire()
    assert time.monotonic() - start < 10
    os.killpg(busy.pid, signal.SIGKILL)
    busy.wait()


class FailingStore:
    """The real client, with its store refusing the first ``failures`` lock creations for a
    reason other than contention (a permission or database error)."""

    def __init__(self, client, failures: int):
        self.client, self.failures, self.calls = client, failures, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_registered_model(self, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls <= self.failures:
            raise MlflowException(
                "permission denied for table registered_models", error_code="PERMISSION_DENIED"
            )
        return self.client.create_registered_model(*args, **kwargs)


def test_a_store_error_waits_and_retries_and_honours_the_deadline(store, caplog):
    flaky = FailingStore(client_for(store), failures=3)
    with PromotionLock(flaky, NAME, LockTiming(timeout=30, lease=1.0, poll=0.2)) as lock:
        assert lock.generation == 1
    assert flaky.calls == 4 and caplog.text.count("permission denied") == 3
    broken = FailingStore(client_for(store), failures=10**6)
    start = time.monotonic()
    with pytest.raises(RegistryError, match="last error: permission denied"):
        PromotionLock(broken, NAME, LockTiming(timeout=1.5, lease=1.0, poll=0.2)).acquire()
    assert 1.5 <= time.monotonic() - start < 5 and broken.calls <= 10


def test_a_version_that_fails_registration_is_an_error_and_never_aliased(store):
    """A store that marks every new version FAILED_REGISTRATION (as a server whose artifact
    copy failed does): registration raises with the store's reason, nothing is aliased,
    and a retry of the same pipeline run does not take the failed version for its own."""
    import sqlite3

    import keras
    import numpy as np

    from image_finetune.registry.versions import register_version

    db = store.tracking_uri.removeprefix("sqlite:///")
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TRIGGER fail_registration AFTER INSERT ON model_versions BEGIN "
            "UPDATE model_versions SET status = 'FAILED_REGISTRATION', "
            "status_message = 'artifact copy failed: quota exceeded' "
            "WHERE name = NEW.name AND version = NEW.version; END"
        )
    client = client_for(store)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    example = np.zeros((1, 4), np.float32)
    tags = {"pipeline_run_id": "run-that-fails"}
    for _ in ("first try", "retry"):
        run_id = client.create_run("0").info.run_id
        with pytest.raises(
            RegistryError,
            match=r"v\d failed registration: artifact copy "
            "failed: quota exceeded",
        ):
            register_version(client, store.tracking_uri, NAME, run_id, model, example, tags)
    failed = client.search_model_versions(
        f"name = '{NAME}' and tags.pipeline_run_id = 'run-that-fails'"
    )
    assert sorted(int(v.version) for v in failed) == [4, 5]  # the retry made its own
    assert champion(store) is None and client.get_registered_model(NAME).aliases == {}


# --- Fencing, recovery and the history's own integrity, through the CLI, on a sqlite store
# of the test's own and on the real MLflow server (PostgreSQL).

# Runs the CLI with a fault injected at one point of the real promotion: "pause" stops the
# process (SIGSTOP) once it holds the lock and has read the champion, before it writes;
# "kill-before-alias" / "kill-after-alias" SIGKILL it around the alias write.
FAULTY_CLI = """
import os, signal, sys
from mlflow import MlflowClient
import image_finetune.registry.promotion as promotion
from image_finetune.cli import app

fault = os.environ["PROMOTION_FAULT"]
if fault == "pause":
    read_champion = promotion.version_by_alias

    def paused(*args):
        found = read_champion(*args)
        os.kill(os.getpid(), signal.SIGSTOP)
        return found

    promotion.version_by_alias = paused
else:
    move_alias = MlflowClient.set_registered_model_alias

    def killed(self, *args):
        if fault == "kill-after-alias":
            move_alias(self, *args)
        os.kill(os.getpid(), signal.SIGKILL)

    MlflowClient.set_registered_model_alias = killed
app(args=sys.argv[1:], prog_name="image-finetune")
"""


@pytest.fixture(params=["sqlite", "server"])
def any_store(request, template, tmp_path, monkeypatch) -> RegistryParams:
    """A registry with three READY versions and none promoted: a sqlite store of the test's
    own, or a model of its own on the real MLflow server."""
    if request.param == "sqlite":
        return request.getfixturevalue("store")
    services = request.getfixturevalue("services")
    for key, value in services.items():
        monkeypatch.setenv(key, value)
    return server_model(services["MLFLOW_TRACKING_URI"])


def server_model(uri: str) -> RegistryParams:
    """A registered model of its own on the server, with three READY versions (no model
    files: promotion never reads them)."""
    import uuid

    params = RegistryParams(tracking_uri=uri, model_name=f"fence-{uuid.uuid4().hex[:8]}")
    client = client_for(params)
    experiment = client.get_experiment_by_name("promotion-tests") or client.get_experiment(
        client.create_experiment("promotion-tests")
    )
    run = client.create_run(experiment.experiment_id)
    client.create_registered_model(params.model_name)
    for _ in range(3):
        client.create_model_version(
            params.model_name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
    return params


def lease_for(store: RegistryParams) -> str:
    """A lease a few of the store's round trips long (each takes up to a second on the
    server of a loaded test machine; the default lease is 30 s)."""
    return "8" if store.tracking_uri.startswith("http") else "3"


def params_file(store: RegistryParams, folder: Path) -> str:
    path = folder / "params.yaml"
    path.write_text(
        f"registry:\n  tracking_uri: {store.tracking_uri}\n  model_name: {store.model_name}\n"
    )
    return str(path)


def faulty_cli(fault: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", FAULTY_CLI, *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PROMOTION_FAULT": fault},
    )


def wait_stopped(process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``process`` has stopped itself (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{process.pid}/stat").read_text().split(")")[-1].split()[0] != "T":
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the promotion never reached its pause"
        time.sleep(0.05)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def moves(store: RegistryParams) -> list[tuple]:
    return [(e["action"], e["version"], e.get("state", "done")) for e in promotion_history(store)]


def test_a_holder_paused_past_its_lease_moves_nothing_after_a_waiter_promoted(
    any_store, tmp_path, monkeypatch
):
    """The holder stops (SIGSTOP) inside the lock, a waiter breaks the stale lock and
    promotes; resumed (SIGCONT), the holder must find the lock lost and write nothing."""
    monkeypatch.setenv("IMAGE_FINETUNE_LOCK_LEASE", lease_for(any_store))  # the holder's
    settings = params_file(any_store, tmp_path)
    promote(any_store, "1", "release")
    holder_process = faulty_cli("pause", "promote", "2", "-p", settings)
    wait_stopped(holder_process)
    # The waiter waits out the holder's stored lease; its own (30 s) keeps it safe from a
    # slow store while it holds the lock in turn.
    waiter = subprocess.run(
        [sys.executable, "-m", "image_finetune.cli", "promote", "3", "-p", settings],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IMAGE_FINETUNE_LOCK_LEASE": "30"},
    )
    assert waiter.returncode == 0, waiter.stderr[-2000:]
    os.kill(holder_process.pid, signal.SIGCONT)
    _, stderr = holder_process.communicate(timeout=120)
    assert holder_process.returncode == RegistryError.exit_code, stderr[-2000:]
    assert "lost the promotion lock" in stderr and "Traceback" not in stderr
    assert champion(any_store) == "3"
    assert moves(any_store) == [("promote", "1", "done"), ("promote", "3", "done")]


def test_a_waiter_honours_the_lease_stored_with_the_lock_not_its_own(store, tmp_path):
    log = tmp_path / "lock.log"
    silent = holder(store, log, hold=600, lease=4.0)
    assert silent.stdout.readline().strip() == "holding"
    os.killpg(silent.pid, signal.SIGSTOP)  # no heartbeat from now on
    try:
        start = time.monotonic()
        with PromotionLock(client_for(store), NAME, LockTiming(timeout=60, lease=0.3, poll=0.05)):
            waited = time.monotonic() - start
    finally:
        os.killpg(silent.pid, signal.SIGKILL)
        silent.wait()
    assert 4.0 <= waited < 30, f"the 4 s lease was broken after {waited:.1f} s"


@pytest.mark.parametrize("fault", ["kill-after-alias", "kill-before-alias"])
def test_a_promotion_killed_between_its_steps_is_reported_then_settled(
    store, tmp_path, monkeypatch, fault
):
    monkeypatch.setenv("IMAGE_FINETUNE_LOCK_LEASE", "2")  # the dead holder's lock: 2 s
    settings = params_file(store, tmp_path)
    promote(store, "1", "release")
    killed = faulty_cli(fault, "promote", "2", "-p", settings)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    moved = fault == "kill-after-alias"
    assert champion(store) == ("2" if moved else "1")

    listing = cli("models", "-p", settings)
    assert listing.exit_code == 0, listing.output
    assert "UNFINISHED promote to v2" in listing.output
    assert (
        "the alias moved but the record was not completed"
        if moved
        else "the alias did not move to it"
    ) in listing.output

    if moved:  # the next rollback completes the record, then walks back from v2
        result = cli("rollback", "-p", settings)
        assert result.exit_code == 0, result.output
        assert "champion is now v1 (was v2)" in result.output
        assert moves(store) == [
            ("promote", "1", "done"),
            ("promote", "2", "done"),
            ("rollback", "1", "done"),
        ]
    else:  # the next promotion marks it abandoned; rollback skips it
        assert cli("promote", "3", "-p", settings).exit_code == 0
        assert cli("rollback", "-p", settings).exit_code == 0
        assert moves(store) == [
            ("promote", "1", "done"),
            ("promote", "2", "abandoned"),
            ("promote", "3", "done"),
            ("rollback", "1", "done"),
        ]
    assert champion(store) == "1"
    assert "UNFINISHED" not in cli("models", "-p", settings).output
    assert lock_models(store) == []  # nothing of the lock left in the Models list


MALFORMED = [
    ("promotion.000001", "{not json", "not JSON"),
    ("promotion.000001", "[1, 2]", "a JSON list, not an object"),
    (
        "promotion.000001",
        '{"action": "promote", "at": "now", "by": "me", "reason": "x"}',
        "'version' is missing",
    ),
    (
        "promotion.000001",
        '{"action": "promote", "version": 2, "at": "now", "by": "me", "reason": "x"}',
        "'version' is missing or not a str",
    ),
    (
        "promotion.000001",
        '{"action": "demote", "version": "2", "at": "now", "by": "me", "reason": "x"}',
        "unknown action 'demote'",
    ),
    (
        "promotion.000001",
        '{"seq": "one", "action": "promote", "version": "2", "at": "now", '
        '"by": "me", "reason": "x"}',
        "its seq 'one' is not the 1",
    ),
    ("promotion.latest", "{}", "its name is not 'promotion.' and a sequence number"),
]


@pytest.mark.parametrize("tag,value,why", MALFORMED)
def test_a_malformed_history_tag_is_a_registry_error_naming_it(store, tmp_path, tag, value, why):
    settings = params_file(store, tmp_path)
    promote(store, "1", "release")
    client_for(store).set_registered_model_tag(NAME, tag, value)
    for command in (["models"], ["rollback"], ["promote", "2"]):
        result = cli(*command, "-p", settings)
        assert result.exit_code == RegistryError.exit_code, (command, result.output)
        assert f"promotion-history tag {tag!r} of {NAME} is malformed ({why}" in result.output
        assert "Traceback" not in result.output
    assert champion(store) == "1"


def test_a_sqlite_store_in_a_missing_folder_is_an_error_not_a_new_store(tmp_path, monkeypatch):
    from image_finetune.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "no" / "such" / "dir"
    missing = RegistryParams(tracking_uri=f"sqlite:///{folder / 'x.db'}", model_name=NAME)
    for command in (["models"], ["rollback"], ["promote", "1"]):
        result = cli(*command, "-p", params_file(missing, tmp_path))
        assert result.exit_code == ConfigError.exit_code, (command, result.output)
        assert f"{folder}, which does not exist" in result.output
    assert not (tmp_path / "no").exists()
