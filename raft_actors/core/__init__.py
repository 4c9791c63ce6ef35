"""The pure Raft protocol core: no Ray, no asyncio, no clock, no files."""

from .log import RaftLog
from .messages import NONE, Entry, EntryKind, HardState, Message, MsgType, ReadState, Ready
from .progress import Progress, ProgressState
from .raft import TRANSFER, NotLeader, ProposalDropped, RaftCore, Role

__all__ = [
    "NONE", "TRANSFER", "Entry", "EntryKind", "HardState", "Message", "MsgType", "NotLeader",
    "Progress", "ProgressState", "ProposalDropped", "RaftCore", "RaftLog", "ReadState", "Ready", "Role",
]
