"""The pieces both daemons' ``doctor`` commands share: the checklist and the host checks.

``confide-agent doctor`` (``agent.local.doctor``) and ``confide-aggregator doctor``
(``aggregator.doctor``) each put their own checks together from these: ``checklist`` (a
``Finding`` per line, ``render``, ``exit_code``), ``expiry`` (re-exported from
``confide.pki.expiry``: the one 14-day rule the logs, metrics and doctor share),
``identity`` (keys, chain, expiry, CRL), ``handshake`` (one real mutual-TLS handshake, its
failure told apart) and ``host`` (free disk, SQLite state files).
"""

from __future__ import annotations

from confide.doctor.checklist import Finding, Status, exit_code, render
from confide.doctor.handshake import Handshake, Outcome, handshake, split_address
from confide.doctor.host import DiskLimits, StateFile, database_finding, disk_finding
from confide.doctor.identity import (
    IdentityPaths,
    chain_finding,
    crl_finding,
    daemon_uid,
    expiry_finding,
    key_findings,
    read_cert_info,
)
from confide.pki.expiry import EXPIRY_WARN_DAYS, Expiry, Validity, expiry

__all__ = [
    "EXPIRY_WARN_DAYS",
    "DiskLimits",
    "Expiry",
    "Finding",
    "Handshake",
    "IdentityPaths",
    "Outcome",
    "StateFile",
    "Status",
    "Validity",
    "chain_finding",
    "crl_finding",
    "daemon_uid",
    "database_finding",
    "disk_finding",
    "exit_code",
    "expiry",
    "expiry_finding",
    "handshake",
    "key_findings",
    "read_cert_info",
    "render",
    "split_address",
]
