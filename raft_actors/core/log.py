"""The in-memory Raft log: entries, commit and applied indexes, and what still needs persisting."""

from __future__ import annotations

from collections.abc import Sequence

from .messages import Entry


class RaftLog:
    """Entries ``offset+1 .. last_index`` plus the term of ``offset`` (a snapshot boundary later).

    ``unstable_from`` is the first index changed since the shell last persisted the log;
    ``applied`` is the last index handed out for applying.
    """

    __slots__ = ("appended_from", "applied", "commit", "entries", "offset", "offset_term", "unstable_from")

    def __init__(self, entries: Sequence[Entry] = (), commit: int = 0, offset: int = 0, offset_term: int = 0):
        self.entries: list[Entry] = list(entries)
        self.offset = offset
        self.offset_term = offset_term
        if self.entries and self.entries[0].index != offset + 1:
            raise ValueError(f"log must start at index {offset + 1}, got {self.entries[0].index}")
        self.commit = min(commit, self.last_index())
        self.applied = offset
        self.unstable_from = self.last_index() + 1
        self.appended_from = 0  # where the last maybe_append wrote (0: nothing)

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``, or ``None`` if the log does not hold it."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.offset + len(self.entries):
            return self.entries[index - self.offset - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``."""
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a log ending at (last_index, last_term) at least as up to date as ours?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def append(self, entries: Sequence[Entry]) -> None:
        """Put ``entries`` at their indexes, dropping any existing suffix from the first one."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.commit:
            raise AssertionError(f"attempt to overwrite committed entry {first} (commit {self.commit})")
        if first > self.last_index() + 1:
            raise AssertionError(f"gap in log: appending {first} after {self.last_index()}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.unstable_from = min(self.unstable_from, first)

    def maybe_append(self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """Follower side of AppendEntries. Returns the last index now known to match, or ``None``."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        self.appended_from = conflict
        if conflict:
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """The index of the first entry that is new or differs in term from ours (0 if none)."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that term.

        This is the conflict hint of fast log backtracking: every entry after it in our log has a
        term greater than ``term`` and so cannot match the other side's entry at ``index``.
        """
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.entries[index - self.offset - 1].term
            if t <= term:
                return index, t
            index -= 1
        return self.offset, self.offset_term

    def compact_to(self, index: int) -> None:
        """Forget entries up to ``index`` (already applied and covered by a snapshot)."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise AssertionError(f"compacting to {index} beyond applied {self.applied}")
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot ending at ``(index, term)``: committed and applied."""
        self.entries = []
        self.offset, self.offset_term = index, term
        self.commit = self.applied = index
        self.unstable_from = index + 1

    def commit_to(self, index: int) -> bool:
        if index > self.commit:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.commit = index
            return True
        return False

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.unstable_from - self.offset - 1 :] if self.unstable_from <= self.last_index() else []

    def stable_to_end(self) -> None:
        self.unstable_from = self.last_index() + 1

    def next_committed(self) -> list[Entry]:
        """Committed entries not yet handed out for applying (marks them handed out)."""
        if self.commit <= self.applied:
            return []
        ents = self.slice(self.applied + 1, self.commit + 1)
        self.applied = self.commit
        return ents
