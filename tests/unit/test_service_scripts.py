"""infra/services/lib.sh's process checks: a daemon killed hard is dead, even while it waits
to be reaped (a zombie), or a restart takes it for a live server and refuses to start."""

import subprocess
import sys
import time
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "infra" / "services" / "lib.sh"


def pid_alive(pid: int, tmp_path: Path) -> bool:
    pidfile = tmp_path / "daemon.pid"
    pidfile.write_text(f"{pid}\n")
    check = subprocess.run(
        ["bash", "-c", 'source "$1"; pid_alive "$2"', "-", str(LIB), str(pidfile)],
        capture_output=True,
        text=True,
    )
    assert check.returncode in (0, 1), check.stderr
    return check.returncode == 0


def test_a_running_daemon_is_alive(tmp_path):
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(daemon.pid, tmp_path)
    finally:
        daemon.kill()
        daemon.wait()


def test_a_killed_daemon_not_yet_reaped_is_dead(tmp_path):
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    daemon.kill()
    stat = Path(f"/proc/{daemon.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rsplit(") ", 1)[1][0] != "Z":  # not reaped: nobody waits for it
        assert time.monotonic() < deadline, "the killed process never became a zombie"
        time.sleep(0.05)
    try:
        assert not pid_alive(daemon.pid, tmp_path)
    finally:
        daemon.wait()
    assert not pid_alive(daemon.pid, tmp_path)
