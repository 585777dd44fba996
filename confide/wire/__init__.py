"""Wire codecs: signed envelopes, tensor blobs and chunking, and the gRPC status table."""

from confide.wire.blob import (
    CHUNK_BYTES,
    BlobAssembler,
    decode_tensors,
    encode_tensors,
    iter_chunks,
)
from confide.wire.envelope import Binding, canonical_bytes, open_envelope, seal

__all__ = [
    "CHUNK_BYTES",
    "Binding",
    "BlobAssembler",
    "canonical_bytes",
    "decode_tensors",
    "encode_tensors",
    "iter_chunks",
    "open_envelope",
    "seal",
]
