"""Chaos soak: N rounds of a fault at a random moment — SIGKILL of the driver, a learner rank,
a rollout worker or Redis, or a network fault between the job and Redis (reset, stall, lost
reply) — each followed by `--resume`; then a clean final resume, the accounting audit and a
check that nothing of the job is left in the process table.

    python benchmarks/chaos.py --rounds 15 --seed 0

The job talks to Redis through a loopback fault proxy; Redis is this script's, with a
watchdog that restarts it on the same data (as the driver's embedded one does)."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fault proxy lives with the tests

from relayrl.cluster.audit import audit_run  # noqa: E402
from relayrl.cluster.embedded_redis import EmbeddedRedis  # noqa: E402
from relayrl.cluster.session_guard import SESSION_RECORD, session_processes  # noqa: E402
from relayrl.cluster.stray_processes import command_line, pids_where  # noqa: E402
from relayrl.tiny_model import build_tiny_model  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402

FAULTS = ("driver", "learner", "worker", "redis", "reset", "stall", "lost_reply")
PROGRESS_TIMEOUT_S = 180.0
ORPHAN_GRACE_S = 30.0


@dataclass
class Soak:
    out: Path
    model: Path
    proxy: FaultProxy
    redis: EmbeddedRedis
    rng: random.Random
    log: Path
    faults: Counter[str] = field(default_factory=Counter)
    survived: int = 0
    stalls: int = 0
    orphans: list[str] = field(default_factory=list)
    fatal_pending: bool = False

    def args(self, steps: int, resume: bool) -> list[str]:
        overrides = [
            "name=chaos",
            f"model.path={self.model}",
            f"buffer.url=redis://127.0.0.1:{self.proxy.port}/0",
            f"buffer.password_file={self.password_file()}",
            "rollout.num_workers=2",
            "rollout.group_size=2",
            "rollout.sampling.max_new_tokens=8",
            "env.name=arithmetic",
            "learner.micro_batch_tokens=256",
            "learner.batch_timeout_s=120",
            f"trainer.steps={steps}",
            "trainer.prompts_per_step=2",
            "trainer.max_staleness=1",
            "trainer.checkpoint_every=1",
            f"output.dir={self.out / 'run'}",
            "output.tensorboard=false",
            "output.plot=false",
        ]
        config = self.out / "chaos.yaml"
        config.write_text("name: chaos\n")
        args = [sys.executable, "-m", "relayrl.cli", "train", str(config)]
        for item in overrides:
            args += ["--set", item]
        return [*args, "--resume"] if resume else args

    def password_file(self) -> Path:
        path = self.out / "redis-password"
        if not path.exists():
            path.write_text(self.redis.password)
            path.chmod(0o600)
        return path

    def steps_done(self) -> int:
        path = self.out / "run" / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def start(self, steps: int, resume: bool) -> subprocess.Popen[bytes]:
        with self.log.open("a") as log:
            return subprocess.Popen(
                self.args(steps, resume), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_progress(self, driver: subprocess.Popen[bytes], after: int) -> bool:
        """True once a step beyond `after` is written or the driver exits; False on a stall."""
        deadline = time.monotonic() + PROGRESS_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.steps_done() > after or driver.poll() is not None:
                return True
            time.sleep(0.5)
        return False

    def inject(self, driver: subprocess.Popen[bytes]) -> str:
        fault = self.rng.choice(FAULTS)
        self.faults[fault] += 1
        if fault == "driver":
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
        elif fault in ("learner", "worker"):
            title = "ray::LearnerActor" if fault == "learner" else "ray::RolloutWorker"
            victims = job_processes(driver.pid, title)
            if victims:
                os.kill(self.rng.choice(victims), signal.SIGKILL)
        elif fault == "redis":
            assert self.redis.pid is not None
            os.kill(self.redis.pid, signal.SIGKILL)
        elif fault == "reset":
            self.proxy.reset()
        elif fault == "stall":
            self.proxy.stall()
            time.sleep(self.rng.uniform(1.0, 5.0))
            self.proxy.resume()
        else:
            self.proxy.cut_reply_after(self.rng.choice([b"EXEC", b"XREADGROUP", b"XACK"]))
        return fault

    def leftovers(self, session_dir: str | None) -> list[str]:
        """Processes of the job still alive after its driver is gone, given a grace period
        for the parent-death signals and the session guard to act."""
        run_dir = str(self.out / "run")
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while True:
            found = set(pids_where(lambda _pid, argv: any(run_dir in arg for arg in argv)))
            if session_dir:
                found.update(session_processes(session_dir))
            if not found or time.monotonic() > deadline:
                return [" ".join(command_line(pid) or [str(pid)])[:120] for pid in found]
            time.sleep(0.5)

    def end_driver(self, driver: subprocess.Popen[bytes]) -> None:
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
        driver.wait()
        record = self.out / "run" / SESSION_RECORD
        session_dir = json.loads(record.read_text())["session_dir"] if record.exists() else None
        self.orphans.extend(self.leftovers(session_dir))

    def rounds(self, count: int, total_steps: int) -> None:
        """One fault a round. A fault that ends the job (the driver or a learner rank killed)
        is survived once a `--resume` trains a step again; any other once the job does."""
        driver: subprocess.Popen[bytes] | None = None
        fatal_pending = False
        for index in range(count):
            self.proxy.resume()
            if driver is None or driver.poll() is not None:
                if driver is not None:
                    self.end_driver(driver)
                driver = self.start(total_steps, resume=self.steps_done() > 0 or index > 0)
            if not self.wait_progress(driver, self.steps_done()) or driver.poll() is not None:
                self.stalls += 1
                self.end_driver(driver)
                driver, fatal_pending = None, False
                continue
            if fatal_pending:
                self.survived += 1
                fatal_pending = False
            time.sleep(self.rng.uniform(0.0, 3.0))
            fault = self.inject(driver)
            print(f"round {index + 1}: {fault} at step {self.steps_done()}", flush=True)
            if fault != "driver" and not self.wait_progress(driver, self.steps_done()):
                self.stalls += 1
                self.end_driver(driver)
                driver = None
            elif driver.poll() is not None:  # the job ended (a learner rank lost): resume it
                fatal_pending = True
                self.end_driver(driver)
                driver = None
            else:
                self.survived += 1
        if driver is not None:
            self.end_driver(driver)
        self.fatal_pending = fatal_pending


def job_processes(root: int, title: str) -> list[int]:
    def below(pid: int) -> list[int]:
        found = []
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                tokens = children.read_text().split()
            except OSError:
                continue
            for token in tokens:
                found += [int(token), *below(int(token))]
        return found

    return [pid for pid in below(root) if (command_line(pid) or [""])[0].startswith(title)]


def soak(rounds: int, seed: int, out: Path) -> dict[str, object]:
    model = out / "model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    redis_server = EmbeddedRedis(out / "redis", watchdog_s=0.5).start()
    proxy = FaultProxy(redis_server.port).start()
    log = out / "jobs.log"
    chaos = Soak(out, model, proxy, redis_server, random.Random(seed), log)
    started = time.monotonic()
    try:
        total_steps = 1000  # never reached: the rounds end each driver, the final run stops
        chaos.rounds(rounds, total_steps)
        proxy.resume()
        final_steps = chaos.steps_done() + 2
        final = chaos.start(final_steps, resume=True)
        try:
            finished = final.wait(PROGRESS_TIMEOUT_S * 2) == 0
        except subprocess.TimeoutExpired:
            finished = False
        if not finished:
            chaos.stalls += 1
        elif chaos.fatal_pending:
            chaos.survived += 1
        chaos.end_driver(final)
        report = audit_run(out / "run")
    finally:
        proxy.stop()
        redis_server.stop()
    return {
        "rounds": rounds,
        "rounds_survived": chaos.survived,
        "faults": dict(sorted(chaos.faults.items())),
        "steps": chaos.steps_done(),
        "final_resume_finished": finished,
        "trained": report.trained,
        "discarded": report.discarded,
        "dead_lettered": report.dead_lettered,
        "pending": report.pending,
        "undelivered": report.undelivered,
        "added": report.added,
        "duplicates": len(report.duplicates),
        "unaccounted": len(report.unaccounted) + report.missing,
        "stalls": chaos.stalls,
        "orphaned_processes": len(chaos.orphans),
        "orphans": chaos.orphans,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="kept; a temporary dir if unset")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="relayrl-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    result = soak(args.rounds, args.seed, out)
    for key, value in result.items():
        print(f"{key:22} {value}")
    sys.exit(0 if result["duplicates"] == result["stalls"] == result["orphaned_processes"] == 0
             and result["unaccounted"] == 0 else 1)  # fmt: skip


if __name__ == "__main__":
    main()
