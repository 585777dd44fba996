"""The operator's connection to the aggregator: config, identity and Admin stub over mTLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from confide import pki
from confide.config import load_toml
from confide.v1 import admin_pb2_grpc
from confide.wire.blob import MAX_MESSAGE_BYTES

__all__ = ["OperatorConfig", "connect", "load_operator_config"]


@dataclass(frozen=True)
class OperatorConfig:
    """Where the aggregator is and which federation identity the operator uses."""

    federation: str
    address: str
    server_name: str
    identity: pki.Identity


def load_operator_config(path: Path) -> OperatorConfig:
    """Read an operator config (``federation``, ``[aggregator]``, ``[tls]``).

    Raises:
        ConfigError: a key is missing or invalid, or a TLS file cannot be loaded.
    """
    root = load_toml(path)
    federation = root.str("federation")
    agg = root.section("aggregator", required=True)
    address = agg.str("address")
    server_name = agg.str("server_name", "aggregator")
    agg.done()
    tls = root.section("tls", required=True)
    identity = pki.load_identity(
        cert=tls.path("cert"),
        key=tls.path("key"),
        signing_key=tls.path("signing_key"),
        ca=tls.path("ca"),
        crl=tls.path("crl", None),
    )
    tls.done()
    root.section("log")
    root.done()
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
