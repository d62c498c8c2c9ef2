"""Held-out evaluation during a job: every `eval.every` steps and at the last one, the held-out
tasks are shared out over the rollout workers, which play them beside their training groups
with the newest weights. One round is out at a time and nothing waits for it: its `eval/*`
figures join the record of the first step that finds it finished (`eval/step` names the step
it evaluated), and its JSON report goes to OUTPUT/eval/step_<N>.json. A round that falls due
while another is out starts when that one is back. The last step waits: for a round still out
(its report is written; its figures give way to the final round's) and for the final round,
whose figures are in the last step's record."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from relayrl.cluster.job_runtime import JobRuntime
from relayrl.cluster.rollout_fleet import RolloutFleet
from relayrl.config import JobConfig
from relayrl.eval_config import EvalConfig

if TYPE_CHECKING:
    from relayrl.actors.evaluation import EvalEpisode, EvalItem

log = logging.getLogger(__name__)

# Times a share is handed to another worker after the one playing it died.
SHARE_RETRIES = 2


@dataclass
class _Share:
    items: list[EvalItem]
    worker_id: str
    ref: ray.ObjectRef
    retries: int = 0


@dataclass
class _Round:
    step: int
    shares: list[_Share]
    episodes: list[EvalEpisode] = field(default_factory=list)
    failed: str | None = None


class PeriodicEvaluation:
    """The `step_metrics` hook of a job with an `eval` section."""

    def __init__(self, config: JobConfig, section: EvalConfig, output_dir: Path) -> None:
        # Imported here: the held-out items need a tokenizer, which a job without an eval
        # section never loads in the driver.
        from relayrl.actors.eval_setup import eval_plan, held_out_items

        self.section = section
        self.total = config.trainer.steps
        self.plan = eval_plan(config)
        self.items = held_out_items(config, self.plan)
        self.report_dir = output_dir / "eval"
        self.current: _Round | None = None
        # A round fell due while another was out: it starts when that one is back.
        self.waiting = False

    def due(self, step: int) -> bool:
        every = self.section.every
        return bool(every and step % every == 0) or (self.section.at_end and step == self.total)

    def __call__(self, step: int, runtime: JobRuntime) -> Mapping[str, Any]:
        last = step == self.total
        if self.due(step):
            self.waiting = True
        metrics = self._take_finished(runtime.fleet, wait=last)
        if self.waiting and self.current is None:
            self.waiting = False
            self.current = self._start(step, runtime.fleet)
            if last:
                metrics = self._take_finished(runtime.fleet, wait=True)
        return metrics

    def _take_finished(self, fleet: RolloutFleet, wait: bool) -> dict[str, Any]:
        """The current round's figures once it is back ({} while it is out); with `wait`,
        it is waited for (at most eval.timeout_s)."""
        round_ = self.current
        if round_ is None:
            return {}
        deadline = time.monotonic() + self.section.timeout_s
        self._gather(round_, fleet)
        while wait and round_.shares and round_.failed is None:
            if time.monotonic() > deadline:
                round_.failed = "it did not finish within eval.timeout_s"
                break
            ray.wait([share.ref for share in round_.shares], num_returns=1, timeout=2.0)
            self._gather(round_, fleet)
        if round_.shares and round_.failed is None:
            return {}
        self.current = None
        return self._finish(round_)

    def _start(self, step: int, fleet: RolloutFleet) -> _Round:
        workers = fleet.worker_ids()
        shares = []
        for position, worker_id in enumerate(workers):
            items = self.items[position :: len(workers)]
            if items:
                shares.append(_Share(items, worker_id, self._play(fleet, worker_id, items)))
        log.info(
            "evaluation of step %d: %d tasks on %d workers", step, len(self.items), len(shares)
        )
        return _Round(step, shares, failed=None if shares else "no rollout worker was running")

    def _play(self, fleet: RolloutFleet, worker_id: str, items: list[EvalItem]) -> ray.ObjectRef:
        return fleet.handle(worker_id).evaluate.remote(self.plan, items)

    def _gather(self, round_: _Round, fleet: RolloutFleet) -> None:
        refs = [share.ref for share in round_.shares]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        finished = set(done)
        for share in list(round_.shares):
            if share.ref not in finished:
                continue
            try:
                round_.episodes += ray.get(share.ref)
                round_.shares.remove(share)
            except (RayActorError, RayTaskError) as error:
                self._retry(round_, share, fleet, error)

    def _retry(self, round_: _Round, share: _Share, fleet: RolloutFleet, error: Exception) -> None:
        cause = f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}"
        others = [w for w in fleet.worker_ids() if w != share.worker_id] or fleet.worker_ids()
        if share.retries >= SHARE_RETRIES or not others:
            round_.failed = f"{share.worker_id} failed its share ({cause})"
            return
        share.retries += 1
        share.worker_id = others[share.retries % len(others)]
        share.ref = self._play(fleet, share.worker_id, share.items)
        log.warning("evaluation share moved to %s after %s", share.worker_id, cause)

    def _finish(self, round_: _Round) -> dict[str, Any]:
        if round_.failed is not None:
            log.warning("evaluation of step %d abandoned: %s", round_.step, round_.failed)
            return {}
        from relayrl.actors.eval_report import build_report

        report = build_report(self.plan, self.items, round_.episodes, f"step {round_.step}")
        self.report_dir.mkdir(parents=True, exist_ok=True)
        path = self.report_dir / f"step_{round_.step:06d}.json"
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        metrics = report["metrics"]
        log.info(
            "eval of step %d: accuracy %.3f (%d tasks, policy v%d); report %s",
            round_.step,
            metrics["eval/accuracy"],
            len(self.items),
            metrics["eval/policy_version"],
            path,
        )
        return {**metrics, "eval/step": round_.step}


def periodic_evaluation(config: JobConfig, output_dir: Path) -> list[PeriodicEvaluation]:
    """The job's evaluation hook, when it has an eval section."""
    return [] if config.eval is None else [PeriodicEvaluation(config, config.eval, output_dir)]
