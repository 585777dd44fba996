"""The operator's connection to the aggregator: config, identity and Admin stub over mTLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from confide import pki
from confide.config import load_toml
from confide.errors import ConfigError
from confide.v1 import admin_pb2_grpc
from confide.wire.blob import MAX_MESSAGE_BYTES

__all__ = ["OperatorConfig", "connect", "load_operator_config"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class OperatorConfig:
    """Where the aggregator is and which federation identity the operator uses."""

    federation: str
    address: str
    server_name: str
    identity: pki.Identity


def load_operator_config(path: Path) -> OperatorConfig:
    """Read an operator config (``federation``, ``[aggregator]``, ``[tls]``, ``[log]``).

    Every key is read and unknown keys refused before any TLS file is opened, so a typo is
    named even when the files are missing.

    Raises:
        ConfigError: a key is missing, invalid or unknown, or a TLS file cannot be loaded.
    """
    root = load_toml(path)
    federation = root.str("federation")
    agg = root.section("aggregator", required=True)
    address = agg.str("address")
    server_name = agg.str("server_name", "aggregator")
    tls = root.section("tls", required=True)
    cert, key, signing_key = tls.path("cert"), tls.path("key"), tls.path("signing_key")
    ca, crl = tls.path("ca"), tls.path("crl", None)
    # Accepted so one [log] block can be shared with the daemons' configs; the operator CLI
    # writes no log (it prints one line to stderr), but the keys are still checked.
    log = root.section("log")
    level = log.str("level", "info")
    if level not in _LOG_LEVELS:
        raise ConfigError(log.key("level"), f"must be one of {', '.join(_LOG_LEVELS)}")
    log.bool("json", None)
    root.done()
    identity = pki.load_identity(cert=cert, key=key, signing_key=signing_key, ca=ca, crl=crl)
    return OperatorConfig(federation, address, server_name, identity)


def connect(cfg: OperatorConfig) -> tuple[grpc.Channel, admin_pb2_grpc.AdminStub]:
    """Open an mTLS channel to the aggregator and return it with an Admin stub."""
    channel = grpc.secure_channel(
        cfg.address,
        pki.channel_credentials(cfg.identity),
        options=[
            ("grpc.ssl_target_name_override", cfg.server_name),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    return channel, admin_pb2_grpc.AdminStub(channel)
