"""A test CSD for the sandbox upstream, made once per company and kept in the data dir.

With the sandbox, a store can run the whole flow (global CFDIs signed, validated,
stamped, downloaded) before it has its real CSD configured. The certificate is
self-signed and says so in its subject; SAT would reject anything signed with it,
which is the point: sandbox CFDIs are never real.
"""
from __future__ import annotations

import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SANDBOX_ISSUER = "pos-ticket-agent SANDBOX, sin validez fiscal"


def sandbox_csd_files(folder: Path, rfc: str, legal_name: str) -> tuple[Path, Path, str]:
    """(cer, key, password) of the company's sandbox CSD, created on first use."""
    folder.mkdir(parents=True, exist_ok=True)
    cer, key, password_file = folder / f"{rfc}.cer", folder / f"{rfc}.key", folder / f"{rfc}.password"
    if not (cer.exists() and key.exists() and password_file.exists()):
        password = secrets.token_urlsafe(18)
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.now(timezone.utc)
        # SAT writes the 20-digit certificate number as the ASCII of the serial's bytes.
        number = "2" + "".join(secrets.choice("0123456789") for _ in range(19))
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, legal_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, legal_name),
            x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, rfc),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SANDBOX_ISSUER),
        ])  # fmt: skip
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SANDBOX_ISSUER)]))
            .public_key(private_key.public_key())
            .serial_number(int(number.encode("ascii").hex(), 16))
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=4 * 365))
            .sign(private_key, hashes.SHA256())
        )
        encrypted = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
        _write_private(key, encrypted)
        _write_private(password_file, password.encode())
        cer.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    return cer, key, password_file.read_text().strip()


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
