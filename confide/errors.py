"""One error tree for all of Confide, sorted by whose fault an error is.

::

    ConfideError                 base; carries a ``Reason`` (audit reason, gRPC detail)
    ├── ConfigError              an operator's config is wrong; names the key; exit code 2
    ├── PeerError                the other side sent something we refuse
    │   ├── MalformedMessage     cannot be decoded, wrong shape or dtype
    │   ├── OversizedMessage     over a declared limit
    │   ├── ReplayedMessage      seen before, or bound to another job/round/stage
    │   ├── BadSignature         signature or binding does not verify
    │   ├── NonFiniteValue       NaN or infinity in a tensor
    │   └── Unauthorized         identity or role not allowed to do this
    ├── PolicyRefusal            a site's policy says no (budget, dataset, signer, ...)
    └── InternalError            our own bug, environment failure or capacity

Whose fault decides the class where an error is raised. A peer over its own quota (calls,
streams, bytes, rate) is a ``PeerError`` with ``PEER_LIMIT``; a server whose shared capacity
is taken by everyone together raises ``InternalError`` with ``SERVER_BUSY`` (the caller did
nothing wrong and may retry later) or, when retrying cannot help this round (its phase
closed, its memory bound reached), with ``UNAVAILABLE``.

Tests assert ``err.reason``, never the message text. The gRPC boundary maps this tree to
status codes in exactly one table (``confide.wire.status``); a command line maps it to exit
codes with ``exit_code`` (``confide.exits`` prints the one line).
"""

from __future__ import annotations

import enum

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "BadSignature",
    "ConfideError",
    "ConfigError",
    "InternalError",
    "MalformedMessage",
    "NonFiniteValue",
    "OversizedMessage",
    "PeerError",
    "PolicyRefusal",
    "Reason",
    "ReplayedMessage",
    "Unauthorized",
    "exit_code",
]

EXIT_FAILED = 1
"""A command that was refused or failed: a peer's, a policy's or our own error."""
EXIT_CONFIG = 2
"""A command whose configuration or arguments are wrong (the line names the key)."""
EXIT_INTERRUPTED = 130
"""A command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)."""


class Reason(enum.Enum):
    """Stable machine-readable reason; becomes the audit reason and the gRPC detail."""

    # config
    MISSING_KEY = "missing_key"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_KEY = "unknown_key"
    # peer
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    REPLAYED = "replayed"
    BAD_SIGNATURE = "bad_signature"
    NON_FINITE = "non_finite"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_SITE = "unknown_site"
    NOT_SELECTED = "not_selected"
    WRONG_STAGE = "wrong_stage"
    BAD_CERTIFICATE = "bad_certificate"
    UNKNOWN_JOB = "unknown_job"
    PEER_LIMIT = "peer_limit"  # the peer went over its own quota (calls, streams, bytes, rate)
    IDENTITY_IN_USE = "identity_in_use"
    # policy
    BUDGET_EXCEEDED = "budget_exceeded"
    UNKNOWN_DATASET = "unknown_dataset"
    SCHEMA_MISMATCH = "schema_mismatch"
    SIGNER_UNTRUSTED = "signer_untrusted"
    CODE_NOT_ALLOWED = "code_not_allowed"
    DENIED = "denied"
    INVALID_JOB = "invalid_job"
    UNSAFE_REQUEST = "unsafe_request"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    ROUND_NOT_SIGNED = "round_not_signed"  # a round outside the signed job's 1..rounds
    ATTEMPTS_EXCEEDED = "attempts_exceeded"  # past the attempts a site pays for
    MODEL_TOO_LARGE = "model_too_large"
    APPROVAL_PENDING = "approval_pending"  # manual approval: not answered yet, ask again later
    APPROVAL_EXPIRED = "approval_expired"  # manual approval: nobody answered in time
    OUTSIDE_TIME_WINDOW = "outside_time_window"  # the site trains only at set hours: later
    UNTIED_MODEL = "untied_model"  # a model the site cannot tie to the job's version chain
    EVALUATION_CAP = "evaluation_cap"  # the job's hold-out evaluations at this site are spent
    # code bundles (confide.bundle): each refusal of an archive has its own reason
    BUNDLE_MISMATCH = "bundle_mismatch"  # its bytes do not hash to the signed code_sha256
    BUNDLE_UNSAFE_PATH = "bundle_unsafe_path"  # an absolute path, "..", or a non-canonical name
    BUNDLE_SPECIAL_FILE = "bundle_special_file"  # a link, device, FIFO: only regular files
    BUNDLE_TOO_LARGE = "bundle_too_large"  # too many entries, or too many bytes
    MODEL_UNSUPPORTED = "model_unsupported"  # DP-SGD cannot train a layer of the bundle's model
    RESOURCE_LIMIT = "resource_limit"  # a worker stopped at a site limit (memory, time, output)
    # internal
    INTERNAL = "internal"
    WORKER_FAILED = "worker_failed"
    TRAINING_FAILED = "training_failed"
    ROUND_ABORTED = "round_aborted"
    UNAVAILABLE = "unavailable"
    SERVER_BUSY = "server_busy"  # the server's shared capacity is taken: retry later
    # state files (backup, restore, upgrade)
    BACKUP_DAMAGED = "backup_damaged"  # a backup's file is missing, altered or unexpected
    SCHEMA_TOO_NEW = "schema_too_new"  # a state file written by a newer release than this one
    STATE_NOT_EMPTY = "state_not_empty"  # a restore would replace state (or state in use)


class ConfideError(Exception):
    """Base of every error Confide raises on purpose.

    Args:
        reason: the stable reason recorded in audit logs and sent as gRPC detail.
        message: a sentence a site IT person or operator can act on.
        public: True: the message quotes no site data (no record, value, file path or
            worker output), so a site may send it to the aggregator as the one-line detail
            of a refusal or failure; a string: that detail, for a message that quotes data;
            False (the default): only the reason leaves the site.
    """

    default_reason: Reason = Reason.INTERNAL

    def __init__(
        self, message: str, *, reason: Reason | None = None, public: bool | str = False
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason if reason is not None else self.default_reason
        self.message = message
        self.public = public

    def __str__(self) -> str:
        return self.message


class ConfigError(ConfideError):
    """A configuration value is missing or invalid; the CLI prints one line and exits 2.

    Args:
        key: the dotted config key at fault, e.g. ``tls.cert``.
        problem: what is wrong with it.
    """

    default_reason = Reason.INVALID_VALUE

    def __init__(self, key: str, problem: str, *, reason: Reason | None = None) -> None:
        super().__init__(f"config key '{key}': {problem}", reason=reason)
        self.key = key
        self.problem = problem


class PeerError(ConfideError):
    """The peer sent something we refuse; the round goes on without it."""

    default_reason = Reason.MALFORMED


class MalformedMessage(PeerError):
    """A message cannot be decoded or has the wrong shape, dtype or fields."""

    default_reason = Reason.MALFORMED


class OversizedMessage(PeerError):
    """A message or stream exceeds a declared size limit."""

    default_reason = Reason.OVERSIZED


class ReplayedMessage(PeerError):
    """A message was seen before or is bound to another job, round or stage."""

    default_reason = Reason.REPLAYED


class BadSignature(PeerError):
    """A signature does not verify over the canonical bytes."""

    default_reason = Reason.BAD_SIGNATURE


class NonFiniteValue(PeerError):
    """A tensor holds NaN or infinity."""

    default_reason = Reason.NON_FINITE


class Unauthorized(PeerError):
    """The caller's certificate identity or role may not do this."""

    default_reason = Reason.UNAUTHORIZED


class PolicyRefusal(ConfideError):
    """A site's policy refuses a task (budget, dataset, signer, code, approval)."""

    default_reason = Reason.DENIED


class InternalError(ConfideError):
    """Our own failure: a bug, a crashed worker, a full disk."""

    default_reason = Reason.INTERNAL


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that ``exc`` ended, the same for every Confide command.

    ``EXIT_CONFIG`` (2) for a ``ConfigError``, ``EXIT_INTERRUPTED`` (130) for Ctrl-C,
    ``EXIT_FAILED`` (1) for anything else: every other ``ConfideError`` (whoever's fault)
    and a failed call the caller did not turn into one.
    """
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED
