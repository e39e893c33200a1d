"""Throwaway CSD-like certificates for tests (and the benchmark).

make_csd() writes what SAT hands a company, in the same formats: a DER X.509 certificate
whose serial number is the 20-digit certificate number written in ASCII and whose subject
carries the RFC in x500UniqueIdentifier, and a DER PKCS#8 private key encrypted with a
password. It is self-issued by a made-up authority, so it proves nothing to SAT: it only
lets the tests exercise sync.csd and sign CFDIs without SAT's files.
"""
from __future__ import annotations

import itertools
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

X500_UNIQUE_IDENTIFIER = x509.ObjectIdentifier("2.5.4.45")
NAME = x509.ObjectIdentifier("2.5.4.41")

_counter = itertools.count(1)


def certificate_number_for(n: int) -> str:
    """A 20-digit certificate number shaped like SAT's (they start with 3000100000...)."""
    return f"300010000009{n:08d}"


def make_csd(
    tmp_path,
    rfc: str = "EKU9003173C9",
    name: str = "ESCUELA KEMPER URGATE",
    days_valid: int = 365,
    not_before: datetime | None = None,
    password: str = "12345678a",
    *,
    certificate_number: str | None = None,
    key: rsa.RSAPrivateKey | None = None,
    fiel: bool = False,
) -> tuple[Path, Path, str]:
    """Write <rfc>_<number>.cer and .key under tmp_path; return (cer_path, key_path, password).

    not_before defaults to one day ago (UTC); the certificate is valid for days_valid days
    from then. Pass `key` to reuse an RSA key, `fiel=True` for an e.firma-like key usage.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    if certificate_number is None:
        certificate_number = certificate_number_for(next(_counter) * 1000 + secrets.randbelow(1000))
    if not_before is None:
        not_before = datetime.now(timezone.utc) - timedelta(days=1)
    elif not_before.tzinfo is None:
        not_before = not_before.replace(tzinfo=timezone.utc)
    not_after = not_before + timedelta(days=days_valid)
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    company = len(rfc) == 12
    legal_name = name
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, legal_name),
            x509.NameAttribute(NAME, legal_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, legal_name),
            # A company's CSD names the company and its legal representative.
            x509.NameAttribute(X500_UNIQUE_IDENTIFIER, f"{rfc} / VADA800927DJ3" if company else rfc),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, " / VADA800927HSRSRL05"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Sucursal 1"),
        ]
    )
    issuer = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "AC DE PRUEBAS (NO ES DEL SAT)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pos-ticket-agent tests"),
        ]
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=False,
        data_encipherment=fiel,
        key_agreement=fiel,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        # SAT writes the certificate number as ASCII digits in the serial.
        .serial_number(int.from_bytes(certificate_number.encode("ascii"), "big"))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(key, hashes.SHA256())
    )
    cer_path = tmp_path / f"{rfc}_{certificate_number}.cer"
    key_path = tmp_path / f"{rfc}_{certificate_number}.key"
    cer_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode("utf-8")),
        )
    )
    return cer_path, key_path, password
