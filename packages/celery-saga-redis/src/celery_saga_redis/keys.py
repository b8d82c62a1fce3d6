"""The Redis key layout, in one place.

Every key of one execution carries the hash tag ``{<saga id>}``, so each atomic
script touches a single cluster slot. Listing indexes are sorted sets of their
own (scored by creation time, `scores`); they are updated around status changes without
cross-slot transactions, and readers verify what they list. The idempotency key
is named after the caller's key, so it lives in a slot of its own and is only
ever touched by single-key commands on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest output (JSON text, bytes) a completion's announcement carries; a waiter
#: reads a longer one from the execution (`Keys.done_channel`).
OUTPUT_SAID = 16384


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "saga:"

    def execution(self, saga_id: str) -> str:
        """Hash holding the execution (``h`` and ``h:*`` fields) and its steps (``s:<i>``
        and ``s:<i>:<code>``): see layout.py."""
        return f"{self.prefix}{{{saga_id}}}"

    def counters(self, saga_id: str) -> str:
        """Hash of the execution's counters (`update_step(count_in=...)`), while it runs.

        The write that finishes the execution deletes it: a finished execution runs no
        stage again (taking it back to an active status only compensates).
        """
        return f"{self.prefix}counts:{{{saga_id}}}"

    def creating(self, saga_id: str) -> str:
        """Marker set while a cluster create is under way (before its index entries).

        Readers that find an index entry without its execution remove the entry only
        when this marker is absent too: the execution is gone, not still being written.
        """
        return f"{self.prefix}creating:{{{saga_id}}}"

    def done_channel(self, saga_id: str) -> str:
        """Pub/sub channel announcing that the execution reached a terminal status.

        A message is the status's name; for COMPLETED, followed by a space and the
        output's JSON text when that is at most `OUTPUT_SAID` bytes long.
        """
        return f"{self.prefix}done:{{{saga_id}}}"

    def listener_channel(self, tag: str) -> str:
        """A channel nobody publishes on, that an asyncio listener subscribes to first.

        It puts the listener's connection in subscribed mode before any waiter joins;
        it is under the prefix so that an ACL user limited to it may subscribe.
        """
        return f"{self.prefix}listener:{tag}"

    def idempotency(self, key: str) -> str:
        """String holding the saga id created for an idempotency key."""
        return f"{self.prefix}idem:{key}"

    @property
    def index_prefix(self) -> str:
        """Common prefix of every listing index (scripts build index names from it)."""
        return f"{self.prefix}idx:"

    def index_all(self) -> str:
        """Every execution, scored by creation time: written by versions before 0.5.0
        only (`purge` sweeps it; no listing reads it)."""
        return f"{self.prefix}idx:all"

    def index_status(self, status: str) -> str:
        """Executions in one status, scored by creation time (`scores.score`)."""
        return f"{self.prefix}idx:status:{status}"

    def index_name(self, name: str) -> str:
        """Executions of one saga: written by versions before 0.5.0 only (`purge`
        sweeps it; no listing reads it)."""
        return f"{self.prefix}idx:name:{name}"

    def index_name_status(self, name: str, status: str) -> str:
        """Executions of one saga in one status."""
        return f"{self.prefix}idx:name:{name}:status:{status}"

    def index_names(self) -> str:
        """Set of the saga names executions were created under (what `purge` sweeps)."""
        return f"{self.prefix}idx:names"

    def index_parent(self, parent_id: str) -> str:
        """The child sagas of one execution (its steps'), scored by creation time.

        It takes the execution's expiry when the execution finishes."""
        return f"{self.prefix}idx:parent:{parent_id}"

    def indexes_for(self, name: str, status: str) -> tuple[str, str]:
        """The two status-dependent indexes an execution belongs to."""
        return self.index_status(status), self.index_name_status(name, status)
