"""The company's CSD (certificado de sello digital): load it, check it, sign with it.

SAT issues a CSD as two files: the certificate ``.cer`` (DER X.509) and the private key
``.key`` (DER PKCS#8, encrypted with the password the company chose). ``load_csd`` reads
both and refuses, with a message naming the file and the problem, anything that would
make a PAC reject the CFDI later: an unreadable file, a wrong password, a key of another
certificate, a certificate that is expired or not yet valid, an e.firma (FIEL) given
instead of a CSD, or a CSD of another RFC.

What SAT puts in a CSD, and where this module reads it:

- NoCertificado (20 digits) is the certificate serial number written as ASCII: the
  serial ``0x3330303031...`` is the text ``30001...``.
- The RFC is the first token of the subject's x500UniqueIdentifier (2.5.4.45); for a
  company that attribute reads ``<company RFC> / <legal representative's RFC>``. The
  subject's serialNumber (2.5.4.5) carries CURPs, not the RFC.
- The legal name is the subject's commonName (with the corporate regime, e.g.
  "SA DE CV"; the CFDI's Emisor Nombre goes without it).

The chain up to SAT's certification authority and revocation are not checked here: the
PAC checks both when it stamps.

Plain values in, plain values out: no Flask, no database.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = ["Csd", "CsdError", "load_csd"]

_X500_UNIQUE_IDENTIFIER = x509.ObjectIdentifier("2.5.4.45")
_NAME = x509.ObjectIdentifier("2.5.4.41")
# Persons: 4 letters, companies: 3 (Ñ and & are allowed), then yymmdd and a 3-character
# homoclave.
_RFC_RE = re.compile(r"[A-ZÑ&]{3,4}[0-9]{6}[A-Z0-9]{3}")
_CERTIFICATE_NUMBER_RE = re.compile(r"[0-9]{20}")


class CsdError(Exception):
    """The CSD files cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Csd:
    """A loaded, checked CSD. Build it with load_csd()."""

    certificate_number: str  # NoCertificado, 20 digits
    certificate_base64: str = field(repr=False)  # Certificado attribute: base64 of the DER certificate
    rfc: str
    legal_name: str
    not_before: datetime  # aware, UTC
    not_after: datetime  # aware, UTC
    _private_key: rsa.RSAPrivateKey = field(repr=False, compare=False)
    _public_key: rsa.RSAPublicKey = field(repr=False, compare=False)

    def sign(self, data: bytes) -> str:
        """SAT's Sello: RSA PKCS#1 v1.5 over SHA-256 of `data`, base64."""
        signature = self._private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")

    def verify(self, data: bytes, signature_b64: str) -> bool:
        """True when `signature_b64` is this certificate's Sello of `data`."""
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            return False
        try:
            self._public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


def load_csd(
    cer_path: str | PathLike,
    key_path: str | PathLike,
    password: str,
    *,
    now: datetime | None = None,
    expected_rfc: str | None = None,
) -> Csd:
    """Read and check a CSD; raise CsdError naming the file and the problem.

    `now` (default: the current time) is the instant the certificate must be valid at; a
    naive datetime is taken as UTC. `expected_rfc`, when given, is the RFC the CSD must
    belong to (the company's).
    """
    cer_path, key_path = Path(cer_path), Path(key_path)
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)

    cert, der = _load_certificate(cer_path)
    certificate_number = _certificate_number(cer_path, cert)
    rfc = _rfc(cer_path, cert)
    legal_name = _legal_name(cert)
    _check_is_csd(cer_path, cert)
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CsdError(f"certificate {cer_path}: its key is not RSA; a SAT CSD always is")

    private_key = _load_private_key(key_path, password)
    if private_key.public_key().public_numbers() != public_key.public_numbers():
        raise CsdError(
            f"private key {key_path} does not match certificate {cer_path} "
            f"(NoCertificado {certificate_number}): it is the key of another certificate"
        )

    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        raise CsdError(
            f"certificate {cer_path} (NoCertificado {certificate_number}) is not valid yet: "
            f"valid from {_show_time(not_before)} to {_show_time(not_after)}"
        )
    if now > not_after:
        raise CsdError(
            f"certificate {cer_path} (NoCertificado {certificate_number}) expired on "
            f"{_show_time(not_after)}; ask SAT for a new CSD"
        )

    if expected_rfc is not None and rfc != expected_rfc.strip().upper():
        raise CsdError(
            f"certificate {cer_path} is not a CSD of RFC {expected_rfc.strip().upper()}: "
            f"it belongs to {rfc} ({legal_name})"
        )

    return Csd(
        certificate_number=certificate_number,
        certificate_base64=base64.b64encode(der).decode("ascii"),
        rfc=rfc,
        legal_name=legal_name,
        not_before=not_before,
        not_after=not_after,
        _private_key=private_key,
        _public_key=public_key,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CsdError(f"{what} {path}: file not found") from None
    except IsADirectoryError:
        raise CsdError(f"{what} {path}: is a directory, not a file") from None
    except OSError as e:
        raise CsdError(f"{what} {path}: cannot read the file ({e.strerror or e})") from None
    if not data:
        raise CsdError(f"{what} {path}: the file is empty")
    return data


def _load_certificate(path: Path) -> tuple[x509.Certificate, bytes]:
    data = _read(path, "certificate")
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        # Accept a PEM copy too, as long as it holds a certificate.
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise CsdError(
                f"certificate {path}: not an X.509 certificate (expected SAT's .cer file, DER)"
            ) from None
    return cert, cert.public_bytes(serialization.Encoding.DER)


def _certificate_number(path: Path, cert: x509.Certificate) -> str:
    serial = cert.serial_number
    raw = serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big")
    try:
        number = raw.decode("ascii")
    except UnicodeDecodeError:
        number = ""
    if not _CERTIFICATE_NUMBER_RE.fullmatch(number):
        raise CsdError(
            f"certificate {path}: serial number {serial:x} is not a SAT certificate number "
            f"(20 digits written in ASCII); this is not a certificate issued by SAT"
        )
    return number


def _rfc(path: Path, cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(_X500_UNIQUE_IDENTIFIER)
    text = str(values[0].value) if values else ""
    # Company: "EKU9003173C9 / VADA800927DJ3" (company / legal representative); person:
    # just the RFC.
    rfc = text.split("/")[0].strip().upper()
    if not _RFC_RE.fullmatch(rfc):
        raise CsdError(
            f"certificate {path}: no RFC in the subject's x500UniqueIdentifier "
            f"(found {text!r}); this is not a SAT CSD"
        )
    return rfc


def _legal_name(cert: x509.Certificate) -> str:
    for oid in (NameOID.COMMON_NAME, _NAME, NameOID.ORGANIZATION_NAME):
        values = cert.subject.get_attributes_for_oid(oid)
        if values and str(values[0].value).strip():
            return str(values[0].value).strip()
    return ""


def _check_is_csd(path: Path, cert: x509.Certificate) -> None:
    # A CSD may only sign (digitalSignature + nonRepudiation). The e.firma (FIEL), which
    # people often upload by mistake, also allows encipherment and key agreement, and SAT
    # rejects a CFDI sealed with it.
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if usage.data_encipherment or usage.key_agreement:
        raise CsdError(
            f"certificate {path}: is an e.firma (FIEL) certificate, not a CSD; a CFDI must be "
            f"sealed with a certificado de sello digital"
        )
    if not usage.digital_signature:
        raise CsdError(f"certificate {path}: its key usage does not allow digital signatures")


def _load_private_key(path: Path, password: str) -> rsa.RSAPrivateKey:
    data = _read(path, "private key")
    if password is None or password == "":
        raise CsdError(f"private key {path}: no password given; SAT .key files are encrypted")
    secret = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    pem = data.lstrip().startswith(b"-----BEGIN")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        key = load(data, secret)
    except TypeError:
        # cryptography: "Password was given but private key is not encrypted."
        raise CsdError(
            f"private key {path}: is not encrypted; expected SAT's .key file "
            f"(PKCS#8, encrypted with the CSD password)"
        ) from None
    except UnsupportedAlgorithm as e:
        raise CsdError(f"private key {path}: encrypted with an unsupported algorithm ({e})") from None
    except ValueError:
        if pem or _is_encrypted_pkcs8(data):
            raise CsdError(f"private key {path}: wrong password (the key could not be decrypted)") from None
        raise CsdError(
            f"private key {path}: not an encrypted PKCS#8 private key (expected SAT's .key file, DER)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CsdError(f"private key {path}: not an RSA key; a SAT CSD key always is")
    return key


def _is_encrypted_pkcs8(data: bytes) -> bool:
    """Whether `data` is shaped like DER EncryptedPrivateKeyInfo:
    SEQUENCE { SEQUENCE { OID, ... }, OCTET STRING }. Tells a wrong password (the shape is
    right, decryption fails) from a file that is no key at all."""
    try:
        tag, body, end = _der(data, 0)
        if tag != 0x30 or end != len(data):
            return False
        tag, alg, pos = _der(data, body)
        if tag != 0x30 or data[alg] != 0x06:
            return False
        tag, _, end2 = _der(data, pos)
        return tag == 0x04 and end2 == end
    except IndexError:
        return False


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of element) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise IndexError
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise IndexError
    return tag, pos, pos + length


def _show_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
