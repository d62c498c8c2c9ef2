"""On a Ray cluster of several machines the output folder must be one folder they all see:
the learner writes checkpoints where it runs, and `--resume` reads them on the driver."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from relayrl.errors import JobConfigError

# Filesystem types (/proc/mounts) that every node mounting them sees the same way.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "ceph", "glusterfs", "lustre", "beegfs", "gpfs", "orangefs"}
)


def filesystem_type(path: PurePosixPath, mounts: str) -> str:
    """The type of the mount holding `path`: the longest mount point that contains it."""
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == PurePosixPath(point) or PurePosixPath(point) in path.parents
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def is_shared(kind: str) -> bool:
    # FUSE mounts of object stores and cluster filesystems (gcsfuse, s3fs, juicefs, ...).
    return kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")


def check_shared_output(output_dir: str, node_hosts: set[str], mounts: str) -> None:
    """Refuse an output folder a multi-machine cluster would not share (JobConfigError)."""
    if len(node_hosts) <= 1:
        return  # one machine (however many Ray nodes) shares its own disk
    spans = f"this Ray cluster spans {len(node_hosts)} machines ({', '.join(sorted(node_hosts))})"
    if not Path(output_dir).is_absolute():
        raise JobConfigError(
            f"output.dir {output_dir!r} is relative and {spans}: each process would resolve "
            "it in its own working directory; name a folder on storage every node mounts"
        )
    kind = filesystem_type(PurePosixPath(Path(output_dir).resolve()), mounts)
    if not is_shared(kind):
        raise JobConfigError(
            f"output.dir {output_dir!r} is on a {kind} filesystem, local to this machine, and "
            f"{spans}: checkpoints would land on the learner's node and --resume would find "
            "nothing; name a folder on shared storage (NFS, CephFS, Lustre, a FUSE mount)"
        )
