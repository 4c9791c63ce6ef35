"""The pure Raft protocol core: no Ray, no asyncio, no clock, no files."""

from .log import RaftLog
from .membership import ConfChange, ConfChangeError, ConfChangeType, ConfState
from .messages import NONE, Entry, EntryKind, HardState, Message, MsgType, Promotion, ReadState, Ready
from .progress import Progress, ProgressState
from .raft import TRANSFER, ConfChangePending, CoreStatus, NotLeader, ProposalDropped, RaftCore, Role
from .settings import CoreConfig

__all__ = [
    "NONE", "TRANSFER", "ConfChange", "ConfChangeError", "ConfChangePending", "ConfChangeType", "ConfState", "CoreConfig", "CoreStatus", "Entry", "EntryKind", "HardState", "Message", "MsgType", "NotLeader",
    "Progress", "ProgressState", "Promotion", "ProposalDropped", "RaftCore", "RaftLog", "ReadState", "Ready", "Role",
]
