"""A multi-node rehearsal on CPU: a head and worker nodes started with `ray start` on this
machine, a relayrl job submitted with `ray job submit`, and what a real cluster would show —
learner ranks packed on one node, each engine in a bundle of its own, `relayrl scale` growing the
fleet, a node joining and another lost mid-run with the job going on and the audit finding every
entry, and an output folder the nodes would not share refused with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_placement_groups

from relayrl.cluster.audit import audit_run
from relayrl.metrics import read_metrics
from tests.job_harness import job_args, steps_done
from tests.ray_nodes import RAY, ROOT, LocalCluster

pytestmark = pytest.mark.slow

STEPS = 40
JOB_S = 420
ENDED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # Short: Ray's Unix socket paths live under its temp folder.
    folder = Path(tempfile.mkdtemp(prefix="rr-", dir="/tmp"))
    (folder / "logs").mkdir()
    nodes = LocalCluster(folder / "ray", folder / "logs")
    try:
        # The head holds the driver and the zero-CPU actors only; node a fits the two learner
        # ranks exactly, node b the rollout workers.
        nodes.start_head(cpus=0)
        nodes.join("a", cpus=2)
        nodes.join("b", cpus=1)
        yield nodes
    finally:
        left = nodes.stop()
        shutil.rmtree(folder, ignore_errors=True)
        assert left == [], f"processes of the rehearsal cluster still run: {left}"


def submit(cluster: LocalCluster, submission_id: str, entrypoint: list[str]) -> JobSubmissionClient:
    done = subprocess.run(
        [RAY, "job", "submit", f"--address={cluster.dashboard}",
         f"--submission-id={submission_id}", "--no-wait", "--", *entrypoint],
        env=cluster.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return JobSubmissionClient(cluster.dashboard)


def train_args(model: str, out: Path, config: Path, extra: list[str]) -> list[str]:
    config.write_text("name: rehearsal\n")
    args = job_args(model, out, STEPS, ["name=rehearsal", "output.plot=false", *extra])
    args[args.index("-")] = str(config)
    return args


def wait_until(client: JobSubmissionClient, job: str, done, what: str) -> None:
    deadline = time.monotonic() + JOB_S
    while not done():
        status = client.get_job_status(job)
        assert status not in ENDED, f"job {status} before {what}:\n{tail(client, job)}"
        assert time.monotonic() < deadline, f"never {what}:\n{tail(client, job)}"
        time.sleep(0.5)


def tail(client: JobSubmissionClient, job: str) -> str:
    return client.get_job_logs(job)[-3000:]


def ended(client: JobSubmissionClient, job: str) -> JobStatus:
    deadline = time.monotonic() + JOB_S
    while (status := client.get_job_status(job)) not in ENDED:
        assert time.monotonic() < deadline, f"job still {status}"
        time.sleep(0.5)
    return status


def alive_actors(cluster: LocalCluster, class_name: str) -> list:
    return list_actors(
        address=cluster.dashboard,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
        detail=True,
        raise_on_missing_output=False,
    )


def bundles(cluster: LocalCluster, group_id: str) -> list[tuple[str, dict]]:
    """(node id, resources) of each bundle of a placement group."""
    [group] = list_placement_groups(
        address=cluster.dashboard,
        filters=[("placement_group_id", "=", group_id)],
        detail=True,
        raise_on_missing_output=False,
    )
    return [(bundle["node_id"], bundle["unit_resources"]) for bundle in group.bundles]


def last_record(out: Path) -> dict:
    records = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    return records[-1] if records else {}


def test_a_submitted_job_is_placed_scaled_and_outlives_a_lost_node(
    cluster: LocalCluster, tiny_model_path: str
) -> None:
    out = cluster.temp_dir.parent / "run"  # one machine: any absolute folder is shared
    extra = ["rollout.num_workers=1", "learner.num_ranks=2", "learner.batch_timeout_s=240"]
    args = train_args(tiny_model_path, out, cluster.temp_dir.parent / "job.yaml", extra)
    client = submit(cluster, "rehearsal-train", args)
    job = "rehearsal-train"
    wait_until(client, job, lambda: steps_done(out) >= 1, "a first step")
    nodes = cluster.alive()

    # Placement: the two ranks in one group packed on node a; the engine alone in its bundle.
    learners = alive_actors(cluster, "LearnerActor")
    assert [rank.node_id for rank in learners] == [nodes["a"]] * 2
    assert len({rank.placement_group_id for rank in learners}) == 1
    rank_bundle = (nodes["a"], {"CPU": 1.0})
    assert bundles(cluster, learners[0].placement_group_id) == [rank_bundle] * 2
    [worker] = alive_actors(cluster, "RolloutWorker")
    assert worker.node_id == nodes["b"]
    assert bundles(cluster, worker.placement_group_id) == [(nodes["b"], {"CPU": 0.5})]

    # Elastic scale through the job control actor, from outside the cluster.
    scale = [sys.executable, "-m", "relayrl.cli", "scale", args[4], "2", *args[5:]]
    on_cluster = {**cluster.env(), "RAY_ADDRESS": cluster.gcs_address}  # as an operator would
    scaled = subprocess.run(
        scale, cwd=ROOT, env=on_cluster, capture_output=True, text=True, timeout=120
    )
    assert scaled.returncode == 0, scaled.stderr
    wait_until(client, job, lambda: last_record(out).get("rollout/workers") == 2, "two workers")
    assert {w.node_id for w in alive_actors(cluster, "RolloutWorker")} == {nodes["b"]}

    # A node joins, then the one running both workers is lost: they come back on the new one.
    cluster.join("c", cpus=1)
    step_at_loss = steps_done(out)
    cluster.kill("b")
    status = ended(client, job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert logs.count("replaced by") >= 2, logs[-3000:]
    record = last_record(out)
    assert record["step"] == STEPS and step_at_loss < STEPS
    assert (record["rollout/workers"], record["rollout/restarts"]) == (2, 2)
    replacements = list_actors(
        address=cluster.dashboard,
        filters=[("class_name", "=", "RolloutWorker"), ("node_id", "=", cluster.alive()["c"])],
        detail=True,
        raise_on_missing_output=False,
    )
    assert len(replacements) == 2

    report = audit_run(out)
    assert report.ok and report.added == report.accounted, "\n".join(report.lines())
    assert report.trained > 0


def test_an_output_folder_the_hosts_do_not_share_is_refused_with_the_reason(
    cluster: LocalCluster, tiny_model_path: str
) -> None:
    cluster.join("elsewhere", cpus=0, ip="127.0.0.2")  # a node that looks like another machine
    try:
        out = cluster.temp_dir.parent / "local-run"  # /tmp: this machine's own disk
        args = train_args(tiny_model_path, out, cluster.temp_dir.parent / "refused.yaml", [])
        client = submit(cluster, "rehearsal-refused", args)
        assert ended(client, "rehearsal-refused") == JobStatus.FAILED
        logs = client.get_job_logs("rehearsal-refused")
        assert "local to this machine" in logs, logs[-3000:]
        assert "spans 2 machines (127.0.0.2, " in logs, logs[-3000:]
        assert not (out / "metrics.jsonl").exists()
    finally:
        cluster.kill("elsewhere")
