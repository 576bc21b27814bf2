"""The wire protocol and the vocabulary shared by broker, agents and clients.

Depends on nothing but the standard library and msgpack.
"""

from .codec import (
    MAX_FRAME,
    VERSION,
    ProtocolError,
    VersionMismatch,
    batches,
    decode,
    decode_batch,
    encode,
    encode_batch,
)
from .states import ALL_STATES, TERMINAL_STATES, ErrorCode, JobState, Outcome

__all__ = [
    "ALL_STATES", "MAX_FRAME", "TERMINAL_STATES", "VERSION", "ErrorCode", "JobState",
    "Outcome", "ProtocolError", "VersionMismatch", "batches", "decode", "decode_batch",
    "encode", "encode_batch",
]
