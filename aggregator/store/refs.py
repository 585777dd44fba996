"""Which blobs the aggregator's rows name: the one answer that backup, restore and the blob
collection all use.

A blob is named (``BlobRefs``) by:

- every model version: its blob (``ModelRow.sha256``) and its server optimizer's state
  (``ModelRow.optimizer_state``), whatever its job's state: version 0 is a built-in job's
  generated initial model or a bundle job's uploaded initial weights;
- every round: the model it started from and the one it made (``model_version_in`` and
  ``model_version_out``; model versions too, listed so a round can never outlive its blob);
- every stored job's signed spec: a bundle job's code archive (``model.code_sha256``) and its
  initial weights (``model.initial_sha256``).

Nothing else names a blob: a secure round's masked inputs, evaluation sums and refusals live
in memory or in rows, never in the ``BlobStore``. Rows are never deleted, so a blob once named
stays named: a failed or cancelled job's versions stay downloadable (``Admin.DownloadModel``
serves any stored version of any job) and its code stays with them, without which the weights
cannot be read back into a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from confide.v1 import common_pb2

__all__ = ["BlobRefs", "blob_refs", "is_blob_name"]

_HEX = frozenset("0123456789abcdef")


def is_blob_name(name: str) -> bool:
    """Whether ``name`` can name a blob: 64 lowercase hex digits (a SHA-256)."""
    return len(name) == 64 and all(c in _HEX for c in name)


@dataclass(frozen=True)
class BlobRefs:
    """The blobs stored rows name, by kind.

    Args:
        models: tensors stored with a header (``BlobStore.put``): model versions, optimizer
            states and bundle jobs' initial weights.
        archives: bytes alone (``BlobStore.put_bytes``): bundle jobs' code archives.
    """

    models: frozenset[str]
    archives: frozenset[str]

    @property
    def names(self) -> frozenset[str]:
        """Every blob named, whatever its kind."""
        return self.models | self.archives


def blob_refs(*, specs: Iterable[bytes], models: Iterable[str]) -> BlobRefs:
    """The blobs named by stored job specs and by model-version and round rows.

    Args:
        specs: every stored job's serialized ``JobSpec`` (one this release cannot decode
            names nothing).
        models: every blob name the model-version and round rows hold; "" (no optimizer
            state, no output yet) and anything that is not a blob name are skipped.
    """
    tensors = {sha for sha in models if is_blob_name(sha)}
    archives: set[str] = set()
    for raw in specs:
        try:
            spec = common_pb2.JobSpec.FromString(raw)
        except DecodeError:  # not a job this release wrote: it names no blob
            continue
        if spec.model.kind != common_pb2.MODEL_KIND_BUNDLE:
            continue
        code, initial = spec.model.code_sha256.hex(), spec.model.initial_sha256.hex()
        if is_blob_name(code):
            archives.add(code)
        if is_blob_name(initial):
            tensors.add(initial)
    return BlobRefs(models=frozenset(tensors), archives=frozenset(archives))
