"""A Kubernetes Secret volume as the kubelet updates it, for the token-file tests."""

from __future__ import annotations

import os
from pathlib import Path


def rotate_like_kubelet(mount: Path, token: str, version: int) -> None:
    """A Secret volume's update: a new timestamped folder, then the ..data link swapped to it
    (so a reader sees the old token or the new one, never a half-written file)."""
    folder = mount / f"..{version}"
    folder.mkdir()
    (folder / "token").write_text(token + "\n")
    (mount / "..data_tmp").symlink_to(folder.name)
    os.replace(mount / "..data_tmp", mount / "..data")
