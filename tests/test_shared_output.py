"""A multi-machine job refuses an output folder its nodes would not share, saying why."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from relayrl.cluster.shared_output import check_shared_output, filesystem_type
from relayrl.errors import JobConfigError

MOUNTS = """\
overlay / overlay rw,relatime 0 0
/dev/sda1 /data ext4 rw,relatime 0 0
nas:/export /data/shared nfs4 rw,vers=4.2 0 0
bucket /mnt/bucket fuse.gcsfuse rw 0 0
/dev/sdb1 /mnt/my\\040disk xfs rw 0 0
"""
TWO_MACHINES = {"10.0.0.1", "10.0.0.2"}


def test_the_longest_mount_point_decides() -> None:
    assert filesystem_type(PurePosixPath("/data/shared/runs/a"), MOUNTS) == "nfs4"
    assert filesystem_type(PurePosixPath("/data/sharedx"), MOUNTS) == "ext4"
    assert filesystem_type(PurePosixPath("/data"), MOUNTS) == "ext4"
    assert filesystem_type(PurePosixPath("/mnt/my disk/runs"), MOUNTS) == "xfs"
    assert filesystem_type(PurePosixPath("/tmp/x"), MOUNTS) == "overlay"


def test_one_machine_shares_any_folder() -> None:
    check_shared_output("runs/job", {"10.0.0.1"}, MOUNTS)
    check_shared_output("/data/runs", {"10.0.0.1"}, MOUNTS)


def test_a_relative_folder_is_refused_on_several_machines() -> None:
    with pytest.raises(JobConfigError, match=r"output.dir 'runs/job' is relative.*2 machines"):
        check_shared_output("runs/job", TWO_MACHINES, MOUNTS)


def test_a_local_disk_is_refused_on_several_machines() -> None:
    with pytest.raises(JobConfigError, match=r"on a ext4 filesystem.*--resume would find"):
        check_shared_output("/data/runs/job", TWO_MACHINES, MOUNTS)


def test_network_and_fuse_mounts_are_accepted() -> None:
    check_shared_output("/data/shared/runs/job", TWO_MACHINES, MOUNTS)
    check_shared_output("/mnt/bucket/runs/job", TWO_MACHINES, MOUNTS)
