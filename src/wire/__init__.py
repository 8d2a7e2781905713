"""The contract between edges and server: topics, the batch envelope, record schemas, codecs.

Pure: no I/O. Everything that decodes untrusted bytes enforces :class:`Limits`
and raises only :class:`WireError` subclasses.
"""

from wire.codec import Dictionaries, train_dictionary
from wire.columns import Categorical, Table, TableSchema
from wire.envelope import FORMAT_VERSION, Batch, TimeQuality, encode_batch
from wire.errors import (
    DecodeError,
    LimitError,
    SchemaError,
    TopicError,
    ValidationError,
    WireError,
)
from wire.limits import DEFAULT_LIMITS, Limits
from wire.schemas import SCHEMAS, get_schema
from wire.state import STATE_SIZE, State

__all__ = [
    "DEFAULT_LIMITS", "FORMAT_VERSION", "SCHEMAS", "STATE_SIZE", "Batch", "Categorical",
    "DecodeError", "Dictionaries", "LimitError", "Limits", "SchemaError", "State", "Table",
    "TableSchema", "TimeQuality", "TopicError", "ValidationError", "WireError", "encode_batch",
    "get_schema", "train_dictionary",
]
