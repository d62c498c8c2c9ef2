"""Why the learner discarded an entry it read: the ledger's and the audit's one vocabulary.

"Discarded" is the learner's word: the entry is booked in the ledger under its reason and never
trained. It is not the rollout side's "masked" (an episode kept in its group for the baseline
whose tokens train nothing), which is an `EpisodeEnd`, not a discard. Values are what the
ledger holds, so ledgers of every age read back."""

from __future__ import annotations

from enum import StrEnum

from relayrl import metric_keys as keys


class DiscardReason(StrEnum):
    DUPLICATE = "duplicate"  # a copy of an episode trained or held (a producer's retried push)
    STALE = "stale"  # sampled more than trainer.max_staleness versions before the trained one
    ZERO_VARIANCE = "dynamic_sampling"  # a group whose shaped rewards do not vary (DAPO)
    INCOMPLETE_GROUP = "incomplete_group"  # the rest of a group with a dead-lettered member
    LOST_TIMELINE = "lost_timeline"  # sampled by a policy a crash threw away (newer than ours)
    # Audit only: ledgers written before entries were named by reason book them all here.
    UNNAMED = "discarded"


def discard_metrics(
    discarded: dict[DiscardReason, int], oldest_stale_version: int | None = None
) -> dict[str, int]:
    """A step's discard counts: by reason, in all, and dynamic sampling's (also under its
    pre-0.2 name for one release); with stale discards, the oldest version they came from."""
    filtered = discarded.get(DiscardReason.ZERO_VARIANCE, 0)
    oldest = (
        {}
        if oldest_stale_version is None
        else {keys.STALENESS_DISCARDED_OLDEST_VERSION: oldest_stale_version}
    )
    return {
        **oldest,
        **{keys.discarded(reason): n for reason, n in discarded.items()},
        keys.DISCARDED_TOTAL: sum(discarded.values()),
        keys.FILTER_DISCARDED: filtered,
        keys.FILTER_DROPPED_ALIAS: filtered,
    }
