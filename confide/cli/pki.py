"""``confide pki``: run the federation CA from the command line.

Subcommands: ``init``, ``issue``, ``sign``, ``renew`` (a new certificate for existing keys),
``revoke``, ``show``, and ``enroll`` (run where the identity will live, not on the CA machine:
keys and a CSR for the CA holder to ``sign``).
Each handler is stored as ``func`` on the parsed namespace and returns 0 on success; an
error propagates to ``confide``'s one handler (``confide.exits``): exit 2 for a
``ConfigError`` (one line on stderr naming the key or file), 1 for any other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from confide.pki import (
    Role,
    init_ca,
    issue,
    make_key_and_csr,
    renew,
    revoke,
    sign_csr,
    verify_certificate,
)
from confide.pki import files as pki_files
from confide.pki.certinfo import CertInfo, cert_info, load_pem_certificate
from confide.pki.renew import latest_issued

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(r.value for r in Role)}"
        ) from None


def _init(args: argparse.Namespace) -> int:
    """Create the federation CA."""
    init_ca(args.dir, federation=args.federation)
    crl = args.dir / pki_files.CRL
    print(f"created CA for federation {args.federation!r} in {args.dir}")
    print(f"revocation list {crl}: name it as [tls] crl in every aggregator, agent and operator")
    print("config (the aggregator refuses to start without one); `confide pki revoke` updates it")
    return 0


def _issue(args: argparse.Namespace) -> int:
    """Make keys and a certificate for an aggregator or operator inside the CA folder."""
    path = issue(args.dir, args.name, role=args.role, dns=args.dns, ips=args.ip, days=args.days)
    print(f"issued {args.role.value} certificate {path}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    """Sign a site's CSR for the given role."""
    csr_path: Path = args.csr
    out: Path = args.out if args.out is not None else csr_path.with_suffix(".crt")
    pki_files.refuse_existing(out)
    pem = sign_csr(
        args.dir,
        pki_files.read_bytes(csr_path),
        role=args.role,
        days=args.days,
        dns=args.dns,
        ips=args.ip,
    )
    pki_files.write_new(out, pem, mode=0o644)
    print(f"signed {args.role.value} certificate {out}")
    return 0


def _renew(args: argparse.Namespace) -> int:
    """Issue a new certificate for an existing certificate's keys (or a CSR made with them)."""
    source: str = args.source
    path = Path(source)
    if path.is_file():
        pem = pki_files.read_bytes(path)
    else:  # an identity name: the latest certificate this CA issued to it
        pem = latest_issued(args.dir, source).public_bytes(serialization.Encoding.PEM)
    new = renew(args.dir, pem, days=args.days)
    info = cert_info(load_pem_certificate(new))
    out: Path = args.out if args.out is not None else Path(f"{info.name}.renewed.crt")
    pki_files.refuse_existing(out)
    pki_files.write_new(out, new, mode=0o644)
    print(f"renewed {info.role.value} certificate of {info.name!r}: {out}")
    print(f"serial {info.serial:x}, valid until {info.not_after:%Y-%m-%d}; same keys, same names")
    print("next: move it over the identity's [tls] cert file (mv, same folder), then reload")
    print("the daemon: systemctl reload confide-agent (or confide-aggregator), or kill -HUP")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    """Make keys (0600) and a CSR here, for the CA holder to sign."""
    csr = make_key_and_csr(args.dir, args.name, role=args.role)
    print(f"wrote keys and {csr}")
    print(f"next: send it to the CA holder: confide pki sign {csr.name} --role {args.role.value}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    """Revoke every certificate issued to a name, or one certificate given as a file."""
    path = Path(args.name)
    # A file: just that certificate (e.g. the one a renewal replaced); a name: all of them.
    revoke(args.dir, path if path.is_file() else args.name)
    crl = args.dir / pki_files.CRL
    print(f"revoked {args.name!r} in {crl}; copy it to every [tls] crl path that is not this")
    print("file (the aggregator re-reads it when it changes); reload each agent to apply it")
    print("there: systemctl reload confide-agent (or kill -HUP)")
    return 0


def _show(args: argparse.Namespace) -> int:
    """Print what a certificate binds; with --ca, verify it too."""
    pem = pki_files.read_bytes(args.cert)
    info: CertInfo
    if args.ca is not None:
        crl = pki_files.read_bytes(args.crl) if args.crl is not None else None
        info = verify_certificate(
            pem, ca_pem=pki_files.read_bytes(args.ca), crl_pem=crl, now=datetime.now(UTC)
        )
        status = "verified"
    else:
        info = cert_info(load_pem_certificate(pem))
        status = "not verified (pass --ca)"
    print(f"name:        {info.name}")
    print(f"role:        {info.role.value}")
    print(f"federation:  {info.federation}")
    print(f"serial:      {info.serial:x}")
    print(f"not after:   {info.not_after.isoformat()}")
    print(f"signing key: {info.signing_public_key.hex()}")
    print(f"status:      {status}")
    return 0


def _add_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="CA folder (default: current folder)"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` command and its subcommands to the ``confide`` parser.

    Args:
        subparsers: the top-level parser's subparsers; each leaf sets ``func`` to a handler
            taking the namespace and returning an exit code.
    """
    pki = subparsers.add_parser("pki", help="federation certificate authority")
    sub = pki.add_subparsers(dest="pki_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("init", help="create the federation CA")
    _add_dir(p)
    p.add_argument("--federation", required=True, help="federation name")
    p.set_defaults(func=_init)

    p = sub.add_parser("issue", help="make keys and a certificate (aggregator, operator)")
    p.add_argument("name")
    p.add_argument("--role", type=_role, required=True, help="aggregator|operator|site")
    _add_dir(p)
    p.add_argument("--dns", action="append", default=[], help="extra DNS name (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.set_defaults(func=_issue)

    p = sub.add_parser("sign", help="sign a CSR made by `confide-agent enroll`")
    p.add_argument("csr", type=Path)
    p.add_argument("--role", type=_role, required=True, help="role to grant (normally site)")
    _add_dir(p)
    p.add_argument("--out", type=Path, default=None, help="certificate file (default: CSR.crt)")
    p.add_argument("--dns", action="append", default=[], help="extra DNS name (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.set_defaults(func=_sign)

    p = sub.add_parser("renew", help="a new certificate for an identity's existing keys")
    p.add_argument(
        "source",
        help="the certificate to renew (it may have expired), a CSR made with its keys, "
        "or an identity name (the latest certificate this CA issued to it)",
    )
    _add_dir(p)
    p.add_argument(
        "--out", type=Path, default=None, help="certificate file (default: NAME.renewed.crt)"
    )
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.set_defaults(func=_renew)

    p = sub.add_parser("enroll", help="make keys and a CSR here (operator, aggregator, site)")
    p.add_argument("name")
    p.add_argument("--role", type=_role, required=True, help="aggregator|operator|site")
    p.add_argument("--dir", type=Path, default=Path("."), help="folder for keys and CSR")
    p.set_defaults(func=_enroll)

    p = sub.add_parser(
        "revoke", help="revoke every certificate issued to NAME, or one certificate FILE"
    )
    p.add_argument("name", metavar="NAME|FILE")
    _add_dir(p)
    p.set_defaults(func=_revoke)

    p = sub.add_parser("show", help="print what a certificate binds")
    p.add_argument("cert", type=Path)
    p.add_argument("--ca", type=Path, default=None, help="verify against this CA certificate")
    p.add_argument("--crl", type=Path, default=None, help="and this revocation list")
    p.set_defaults(func=_show)
