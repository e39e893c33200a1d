"""Loading and checking the company's CSD (sync.csd), on throwaway certificates."""
from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from csd_factory import make_csd

from sync.csd import Csd, CsdError, load_csd

NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def key():
    # One RSA key for most tests: generating 2048-bit keys is the slow part.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_loads_a_csd(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, certificate_number="30001000000500003416", key=key)
    csd = load_csd(cer, key_path, password, expected_rfc="EKU9003173C9")
    assert isinstance(csd, Csd)
    assert csd.certificate_number == "30001000000500003416"
    assert csd.rfc == "EKU9003173C9"
    assert csd.legal_name == "ESCUELA KEMPER URGATE"
    assert csd.not_before <= NOW <= csd.not_after
    assert csd.not_before.tzinfo is not None
    assert base64.b64decode(csd.certificate_base64) == cer.read_bytes()
    assert "certificate_base64" not in repr(csd) and "_private_key" not in repr(csd)


def test_certificate_number_is_the_serial_written_in_ascii(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, certificate_number="30001000000500003416", key=key)
    cert = x509.load_der_x509_certificate(cer.read_bytes())
    # What SAT does: the serial's hex digits are the ASCII codes of the number's digits.
    assert f"{cert.serial_number:x}" == "3330303031303030303030353030303033343136"
    assert load_csd(cer, key_path, password).certificate_number == "30001000000500003416"


def test_expected_rfc_is_compared_without_case_or_spaces(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, key=key)
    assert load_csd(cer, key_path, password, expected_rfc=" eku9003173c9 ").rfc == "EKU9003173C9"


def test_person_rfc(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, rfc="VADA800927DJ3", name="ADRIANA VAZQUEZ", key=key)
    csd = load_csd(cer, key_path, password)
    assert (csd.rfc, csd.legal_name) == ("VADA800927DJ3", "ADRIANA VAZQUEZ")


def test_sign_and_verify(tmp_path, key):
    csd = load_csd(*make_csd(tmp_path, key=key))
    data = "||4.0|A|1|2023-03-02T09:30:00|Ñandú||".encode("utf-8")
    seal = csd.sign(data)
    # RSA PKCS#1 v1.5 + SHA-256, base64: check with the certificate itself.
    cert = x509.load_der_x509_certificate(base64.b64decode(csd.certificate_base64))
    cert.public_key().verify(base64.b64decode(seal), data, padding.PKCS1v15(), hashes.SHA256())
    assert csd.verify(data, seal)
    assert not csd.verify(data + b"x", seal)
    assert not csd.verify(data, "not base64!")
    assert not csd.verify(data, base64.b64encode(b"\0" * 256).decode())


def test_wrong_password(tmp_path, key):
    cer, key_path, _ = make_csd(tmp_path, key=key)
    with pytest.raises(CsdError) as e:
        load_csd(cer, key_path, "not-the-password")
    assert str(e.value) == f"private key {key_path}: wrong password (the key could not be decrypted)"
    with pytest.raises(CsdError, match=f"private key {re.escape(str(key_path))}: no password given"):
        load_csd(cer, key_path, "")


def test_key_of_another_certificate(tmp_path, key):
    cer, _, password = make_csd(tmp_path / "a", certificate_number="30001000000900000001", key=key)
    _, other_key, _ = make_csd(tmp_path / "b", certificate_number="30001000000900000002")
    with pytest.raises(CsdError) as e:
        load_csd(cer, other_key, password)
    message = str(e.value)
    assert str(other_key) in message and str(cer) in message
    assert "does not match certificate" in message and "30001000000900000001" in message


def test_expired(tmp_path, key):
    start = datetime(2019, 5, 18, 11, 43, 51, tzinfo=timezone.utc)
    cer, key_path, password = make_csd(tmp_path, not_before=start, days_valid=4 * 365, key=key)
    with pytest.raises(CsdError) as e:
        load_csd(cer, key_path, password)
    assert str(cer) in str(e.value)
    assert "expired on 2023-05-17 11:43:51 UTC" in str(e.value)
    # The same CSD was fine while it lasted.
    assert load_csd(cer, key_path, password, now=datetime(2021, 1, 1)).rfc == "EKU9003173C9"


def test_not_yet_valid(tmp_path, key):
    start = (NOW + timedelta(days=10)).replace(microsecond=0)
    cer, key_path, password = make_csd(tmp_path, not_before=start, key=key)
    with pytest.raises(CsdError) as e:
        load_csd(cer, key_path, password)
    assert str(cer) in str(e.value)
    assert f"is not valid yet: valid from {start:%Y-%m-%d %H:%M:%S} UTC" in str(e.value)


def test_csd_of_another_rfc(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, rfc="AAA010101AAA", name="OTRA EMPRESA", key=key)
    with pytest.raises(CsdError) as e:
        load_csd(cer, key_path, password, expected_rfc="EKU9003173C9")
    assert str(e.value) == (
        f"certificate {cer} is not a CSD of RFC EKU9003173C9: it belongs to AAA010101AAA (OTRA EMPRESA)"
    )


def test_unreadable_files(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, key=key)
    missing = tmp_path / "nope.cer"
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(missing))}: file not found$"):
        load_csd(missing, key_path, password)
    with pytest.raises(CsdError, match=f"^private key {re.escape(str(tmp_path / 'nope.key'))}: file not found$"):
        load_csd(cer, tmp_path / "nope.key", password)
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(tmp_path))}: is a directory"):
        load_csd(tmp_path, key_path, password)

    empty = tmp_path / "empty.cer"
    empty.write_bytes(b"")
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(empty))}: the file is empty$"):
        load_csd(empty, key_path, password)

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a certificate" * 10)
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(garbage))}: not an X.509 certificate"):
        load_csd(garbage, key_path, password)
    with pytest.raises(CsdError, match=f"^private key {re.escape(str(garbage))}: not an encrypted PKCS#8 private key"):
        load_csd(cer, garbage, password)
    # The .cer and the .key swapped.
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(key_path))}: not an X.509 certificate"):
        load_csd(key_path, cer, password)
    with pytest.raises(CsdError, match=f"^private key {re.escape(str(cer))}: not an encrypted PKCS#8 private key"):
        load_csd(cer, cer, password)


def test_unencrypted_key_is_refused(tmp_path, key):
    cer, _, password = make_csd(tmp_path, key=key)
    plain = tmp_path / "plain.key"
    plain.write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(CsdError, match=f"^private key {re.escape(str(plain))}: is not encrypted"):
        load_csd(cer, plain, password)


def test_pem_copies_are_accepted(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, key=key)
    cert = x509.load_der_x509_certificate(cer.read_bytes())
    pem_cer = tmp_path / "copy.pem"
    pem_cer.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key = tmp_path / "copy.key.pem"
    pem_key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.BestAvailableEncryption(password.encode()))
    )
    assert load_csd(pem_cer, pem_key, password).certificate_number == load_csd(cer, key_path, password).certificate_number
    with pytest.raises(CsdError, match="wrong password"):
        load_csd(pem_cer, pem_key, "bad")


def test_fiel_is_not_a_csd(tmp_path, key):
    cer, key_path, password = make_csd(tmp_path, key=key, fiel=True)
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(cer))}: is an e.firma \\(FIEL\\) certificate, not a CSD"):
        load_csd(cer, key_path, password)


def _self_signed(tmp_path, key, *, serial, subject):
    start = NOW - timedelta(days=1)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(serial).not_valid_before(start).not_valid_after(start + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / f"{serial}.cer"
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return path


def test_certificate_not_issued_by_sat(tmp_path, key):
    _, key_path, password = make_csd(tmp_path, key=key)
    uid = x509.ObjectIdentifier("2.5.4.45")
    web = _self_signed(tmp_path, key, serial=0x1F2E3D4C5B6A, subject=x509.Name([
        x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "www.example.com"),
    ]))
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(web))}: serial number 1f2e3d4c5b6a is not a SAT certificate number"):
        load_csd(web, key_path, password)
    no_rfc = _self_signed(tmp_path, key, serial=int.from_bytes(b"30001000000900000077", "big"), subject=x509.Name([
        x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "SIN RFC"),
        x509.NameAttribute(uid, "no es un rfc"),
    ]))
    with pytest.raises(CsdError, match=f"^certificate {re.escape(str(no_rfc))}: no RFC in the subject's x500UniqueIdentifier"):
        load_csd(no_rfc, key_path, password)
