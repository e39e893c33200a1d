"""Store configuration: one TOML file, validated with pydantic v2.

Where the file comes from (see :func:`load_config`):

1. an explicit path (the ``--config`` option of ``ticket-agent``);
2. else the file named by the ``TICKET_AGENT_CONFIG`` environment variable;
3. else the embedded demo defaults (:func:`default_config`, ``is_demo`` True),
   meant only for trying the agent.

Every problem is reported as a :class:`ConfigError` whose text can be shown
as-is to the store's IT person: the file path, then one line per problem
written ``path.to.key: problem`` (e.g. ``companies[0].branches[1].timezone:
unknown time zone "America/Mexico"``).

Relative paths (``server.data_dir`` and the path of a ``file:`` printer)
are relative to the directory holding the configuration file; for the demo
defaults, to the current working directory.  ``file:`` printer paths are
made absolute while loading, so ``BranchConfig.printer`` can be used as-is.
"""

from __future__ import annotations

import calendar
import datetime
import difflib
import ipaddress
import json
import os
import re
import secrets
import string
import tomllib
import typing
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import (
    model_validator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from agent import passwords

__all__ = [
    "DEFAULT_CONFIG_ENV",
    "PORTAL_PLACEHOLDERS",
    "TAX_REGIMES",
    "PERIODICITIES",
    "ConfigError",
    "ServerConfig",
    "UpstreamConfig",
    "DatabaseConfig",
    "FacturapiConfig",
    "BranchConfig",
    "CompanyConfig",
    "Config",
    "load_config",
    "default_config",
    "starter_config_text",
]

DEFAULT_CONFIG_ENV = "TICKET_AGENT_CONFIG"

#: SAT catalogue c_RegimenFiscal (CFDI 4.0).
TAX_REGIMES: tuple[str, ...] = (
    "601", "603", "605", "606", "607", "608", "610", "611", "612", "614",
    "615", "616", "620", "621", "622", "623", "624", "625", "626",
)
TaxRegime = Literal[
    "601", "603", "605", "606", "607", "608", "610", "611", "612", "614",
    "615", "616", "620", "621", "622", "623", "624", "625", "626",
]
assert typing.get_args(TaxRegime) == TAX_REGIMES

#: Periodicidad of the factura global (SAT c_Periodicidad 01..05).
PERIODICITIES: tuple[str, ...] = ("day", "week", "fortnight", "month", "two_months")
Periodicity = Literal["day", "week", "fortnight", "month", "two_months"]
assert typing.get_args(Periodicity) == PERIODICITIES

#: Placeholders allowed in ``companies.portal_url``.
PORTAL_PLACEHOLDERS: tuple[str, ...] = ("company", "branch", "ticket", "total", "date")

_DEMO_SOURCE = "<embedded demo defaults>"


# --------------------------------------------------------------------------
# errors


class ConfigError(Exception):
    """The configuration cannot be used.

    ``str(err)`` is ready to print: a first line naming the file, then one
    line per problem (``  path.to.key: problem``).  ``err.source`` is the file
    path (or ``<embedded demo defaults>``), ``err.problems`` the list of
    ``"path.to.key: problem"`` strings.
    """

    def __init__(self, source: str | os.PathLike[str], problems: list[str], summary: str | None = None):
        self.source = str(source)
        self.problems = list(problems)
        if summary is None:
            n = len(self.problems)
            summary = f"has {n} problem{'s' if n != 1 else ''}"
        self.summary = summary
        super().__init__(self.__str__())

    def __str__(self) -> str:
        head = f"Configuration file {self.source} {self.summary}:"
        return "\n".join([head, *("  " + p for p in self.problems)])


def _problem(message: str, *, at: tuple[Any, ...] = ()) -> PydanticCustomError:
    """A validation error whose message is used verbatim (no pydantic prefix).

    ``at`` is appended to the error location (used by list-level checks such
    as duplicate ids, so the report points at the offending entry)."""
    return PydanticCustomError("config", "{problem}", {"problem": message, "at": at})


def _show(value: Any, limit: int = 60) -> str:
    """Render a value the way it would be written in TOML."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, (list, tuple)):
        text = "a list"
    else:
        text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"true/false ({_show(value)})"
    if isinstance(value, int):
        return f"a number ({_show(value)})"
    if isinstance(value, float):
        return f"a decimal number ({_show(value)})"
    if isinstance(value, str):
        return f"text ({_show(value)})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date/time (dates and times must be written in quotes)"
    return type(value).__name__


# --------------------------------------------------------------------------
# models


class _Model(BaseModel):
    # strict: TOML values are already typed; "16" for an int or 601 for a
    # quoted code is a mistake worth reporting, not something to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def _parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[ipv6]:port``; raise ValueError(plain English)."""
    example = 'write it as host:port, e.g. "0.0.0.0:8572", "127.0.0.1:8572" or "[::]:8572"'
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{_show(value)} must not contain spaces; {example}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"{_show(value)} has a [ without a closing ]; {example}")
        host, rest = value[1:end], value[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"{_show(value)} has no port after the ]; {example}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} inside [ ] is not an IPv6 address; {example}") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"{_show(value)} has no port; {example}")
        if not host:
            raise ValueError(f"{_show(value)} has no host before the port; {example}")
        if ":" in host:
            raise ValueError(f"{_show(value)}: IPv6 addresses must be written in brackets, e.g. \"[::]:8572\"")
        if not _HOST_RE.match(host):
            raise ValueError(f"{_show(host)} is not a valid host name or IP address; {example}")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port {_show(port_text)} is not a number; {example}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return host, port


class ServerConfig(_Model):
    """``[server]``: how the agent listens and where it keeps its files."""

    listen: str = "0.0.0.0:8572"
    data_dir: str = Field(default="data", min_length=1)
    public_url: str = ""
    threads: int = Field(default=16, ge=1, le=256)
    max_body_kb: int = Field(default=1024, ge=1, le=65536)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        try:
            _parse_listen(v)
        except ValueError as e:
            raise _problem(str(e)) from None
        return v

    @field_validator("data_dir")
    @classmethod
    def _check_data_dir(cls, v: str) -> str:
        if not v.strip():
            raise _problem("must not be empty (it is the folder for the database and files)")
        if "\x00" in v:
            raise _problem("contains a NUL character")
        return v

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, v: str) -> str:
        if v == "":
            return v
        hint = 'it must look like "https://tienda.example.com" or "http://192.168.1.10:8572" (or be "" to use the address the request came to)'
        if any(c.isspace() for c in v):
            raise _problem(f"{_show(v)} must not contain spaces; {hint}")
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _problem(f"{_show(v)} is not an http:// or https:// address; {hint}")
        if parts.query or parts.fragment:
            raise _problem(f"{_show(v)} must not contain ? or #; {hint}")
        return v.rstrip("/")

    @property
    def host(self) -> str:
        """Host part of ``listen`` (IPv6 without brackets, e.g. ``"::"``)."""
        return _parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _parse_listen(self.listen)[1]

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_kb * 1024


UpstreamKind = Literal["sandbox", "facturapi"]
FACTURAPI_URL = "https://www.facturapi.io/v2"


class UpstreamConfig(_Model):
    """``[upstream]``: who stamps (timbra) the invoices, and how the agent talks to
    Facturapi for the companies that use it (docs/sync.md)."""

    kind: UpstreamKind = "sandbox"
    facturapi_url: str = FACTURAPI_URL
    # Seconds one request to Facturapi may take before it counts as failed.
    timeout: float = Field(default=15, gt=0, le=300)
    # Receipts pushed at the same time, per company.
    concurrency: int = Field(default=4, ge=1, le=32)
    # Seconds a new ticket's slip waits for the receipt's self_invoice_url before it
    # prints with the company's portal_url instead.
    qr_wait: float = Field(default=3, ge=0, le=60)
    # Seconds between two polls of Facturapi for what customers invoiced.
    poll_every: int = Field(default=300, ge=10, le=86_400)

    @field_validator("facturapi_url")
    @classmethod
    def _check_facturapi_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise _problem(f"must be an http(s) URL like {FACTURAPI_URL!r}, got {_show(v)}")
        return v.rstrip("/")


class DatabaseConfig(_Model):
    """``[database]``: where the tickets are kept (docs/postgresql.md)."""

    # "" keeps them in the SQLite file of data_dir; "postgresql://user@host:5432/db" on a
    # PostgreSQL server that several agent processes may share.
    url: str = ""

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if v == "":
            return v
        hint = 'it must look like "postgresql://agent@db.example.com:5432/tickets" (or be "" for the SQLite file)'
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise _problem(f"{_show(mask_password(v))} is not a postgresql:// address; {hint}")
        try:
            parts.port  # noqa: B018 - reading it is the check
        except ValueError:
            raise _problem(f"{_show(mask_password(v))} has a port that is not a number; {hint}") from None
        if not parts.hostname and "host=" not in parts.query:
            raise _problem(f"{_show(mask_password(v))} names no host; {hint}")
        if not parts.path.strip("/"):
            raise _problem(f"{_show(mask_password(v))} names no database after the host; {hint}")
        return v

    @property
    def is_postgresql(self) -> bool:
        return self.url != ""

    @property
    def shown(self) -> str:
        """The address as logs and pages show it: without its password."""
        return mask_password(self.url) if self.url else "SQLite"


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{parts.username}:***@{netloc[1]}").geturl()


class FacturapiConfig(_Model):
    """``[companies.facturapi]``: the company's Facturapi secret key, read from a file or
    an environment variable, never from this file and never logged."""

    api_key_file: str = ""
    api_key_env: str = ""

    @field_validator("api_key_file")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return _file_setting(v, info)

    @field_validator("api_key_env")
    @classmethod
    def _check_env(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise _problem(f"must be an environment variable name like FACTURAPI_KEY, got {_show(v)}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "FacturapiConfig":
        if bool(self.api_key_file) == bool(self.api_key_env):
            raise _problem("give the secret key as exactly one of api_key_file or api_key_env")
        return self

    def read_key(self, env: Mapping[str, str] | None = None) -> str:
        """The secret key; ValueError naming where it was looked for (never the key)."""
        if self.api_key_env:
            key = (os.environ if env is None else env).get(self.api_key_env, "").strip()
            where = f"the environment variable {self.api_key_env}"
        else:
            try:
                key = Path(self.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ValueError(f"cannot read the Facturapi key file {self.api_key_file}: {e.strerror or e}") from None
            where = f"the file {self.api_key_file}"
        if not key:
            raise ValueError(f"no Facturapi secret key in {where}")
        if not key.startswith(("sk_test_", "sk_live_")):
            raise ValueError(f"the Facturapi key in {where} is not a secret key (sk_test_... or sk_live_...)")
        return key


class CsdConfig(_Model):
    """``csd = { cer = ..., key = ..., password = ... }``: the company's certificado de sello
    digital, the DER .cer and encrypted .key exactly as SAT issues them."""

    cer: str = Field(min_length=1)
    key: str = Field(min_length=1)
    password: str = Field(default="", repr=False)
    password_file: str = ""

    @field_validator("cer", "key", "password_file")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        return _file_setting(v, info)

    @model_validator(mode="after")
    def _one_password(self) -> "CsdConfig":
        if bool(self.password) == bool(self.password_file):
            raise _problem("give the key's password as exactly one of password or password_file")
        return self

    def read_password(self) -> str:
        if self.password:
            return self.password
        return Path(self.password_file).read_text(encoding="utf-8").strip()


_BRANCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_POSTAL_RE = re.compile(r"^[0-9]{5}$")


def _not_blank(v: str) -> str:
    if not v.strip():
        raise _problem("must not be empty")
    return v


def _file_setting(v: str, info: ValidationInfo) -> str:
    """A file named in the configuration, made absolute against the file's own folder."""
    base = (info.context or {}).get("base_dir")
    return str(_resolve_against(Path(base), v)) if v and base is not None else v


def _resolve_against(base_dir: Path, p: str | os.PathLike[str]) -> Path:
    path = Path(p).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return Path(os.path.normpath(path))


class BranchConfig(_Model):
    """``[[companies.branches]]``: one store (sucursal) of a company."""

    id: str
    name: str = Field(min_length=1, max_length=100)
    postal_code: str
    timezone: str = "America/Mexico_City"
    global_series: str = Field(min_length=1, max_length=25)
    printer: str
    # A POS may name one of these in PUT /tickets ("impresora"); others print on `printer`.
    printers: dict[str, str] = Field(default_factory=dict)
    paper_mm: Literal[58, 80] = 80
    native_qr: bool = True
    qr_size: int = Field(default=6, ge=1, le=16)
    qr_error_correction: Literal["L", "M", "Q", "H"] = "M"

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _BRANCH_ID_RE.match(v):
            if not v:
                raise _problem("must not be empty")
            if len(v) > 64:
                raise _problem(f"is {len(v)} characters long; at most 64 are allowed")
            raise _bad_characters(v, shown=True)
        return v

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return _not_blank(v)

    @field_validator("postal_code")
    @classmethod
    def _check_postal(cls, v: str) -> str:
        if not _POSTAL_RE.match(v):
            raise _problem(f"{_show(v)} is not a postal code; it must be exactly 5 digits, e.g. \"68050\"")
        return v

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except Exception:  # ZoneInfoNotFoundError, ValueError, OSError...
            known = zoneinfo.available_timezones()
            if not known:
                raise _problem(
                    f"unknown time zone {_show(v)} (this computer has no time zone database; install the tzdata package)"
                ) from None
            close = difflib.get_close_matches(v, sorted(known), n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else 'use a name like "America/Mexico_City", "America/Cancun" or "America/Tijuana"'
            raise _problem(f"unknown time zone {_show(v)}; {hint}") from None
        return v

    @field_validator("global_series")
    @classmethod
    def _check_series(cls, v: str) -> str:
        if not v.strip():
            raise _problem("must not be empty")
        if "|" in v:
            raise _problem(f"{_show(v)} must not contain |")
        return v

    @field_validator("printer")
    @classmethod
    def _check_printer(cls, v: str, info: ValidationInfo) -> str:
        return _printer_setting(v, info)

    @field_validator("printers")
    @classmethod
    def _check_printers(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        checked = {}
        for name, spec in v.items():
            if not _PRINTER_NAME_RE.match(name):
                raise _problem(f"printer name {_show(name)} must be 1-40 letters, digits, _ or -")
            try:
                checked[name] = _printer_setting(spec, info)
            except PydanticCustomError as exc:
                raise _problem(f"{name}: {exc.message()}") from None
        return checked

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The branch's time zone (``zoneinfo`` caches instances by key)."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def printer_path(self) -> Path | None:
        """The folder of a ``file:`` printer (absolute once loaded), else None."""
        if self.printer.startswith("file:"):
            return Path(self.printer[len("file:") :])
        return None


def _bad_characters(v: str, *, shown: bool) -> PydanticCustomError:
    """The problem of an id or key with characters outside A-Z a-z 0-9 _ - (a secret key
    is not echoed back)."""
    bad = sorted({c for c in v if not (c.isascii() and (c.isalnum() or c in "_-"))})
    prefix = f"{_show(v)} contains" if shown else "contains"
    return _problem(f"{prefix} {' '.join(repr(c) for c in bad)}; only letters A-Z a-z, digits, _ and - are allowed")


def _printer_setting(v: str, info: ValidationInfo) -> str:
    if not v.strip():
        raise _problem('must not be empty (write "none" for no printer)')
    if v.startswith("file:"):
        target = v[len("file:") :]
        if target.startswith("//"):  # file:///abs/dir URL form
            target = urlsplit(v).path
        if not target:
            raise _problem('"file:" needs a folder after it, e.g. "file:data/prints"')
        base = (info.context or {}).get("base_dir")
        if base is not None:
            return "file:" + str(_resolve_against(Path(base), target)) + ("/" if target.endswith("/") else "")
    return v


_PRINTER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_RFC_RE = re.compile(r"^([A-ZÑ&]{3,4})([0-9]{2})([0-9]{2})([0-9]{2})([A-Z0-9]{3})$")
_GENERIC_RFCS = {
    "XAXX010101000": "the generic RFC for the general public",
    "XEXX010101000": "the generic RFC for foreign customers",
}


class CompanyConfig(_Model):
    """``[[companies]]``: one issuer (emisor) with its credentials and branches."""

    key: str
    username: str = Field(min_length=1, max_length=64)
    # Exactly one of password (as the POS sends it) or password_hash (what
    # `ticket-agent hash-password` prints), so the file need not hold the password itself.
    password: str = Field(default="", max_length=128, repr=False)
    password_hash: str = Field(default="", max_length=512, repr=False)
    rfc: str
    legal_name: str = Field(min_length=1, max_length=254)
    tax_regime: TaxRegime
    periodicity: Periodicity = "day"
    self_invoice_days: int = Field(default=7, ge=0, le=365)
    portal_url: str
    # When set, the portal URL carries a short HMAC of the ticket (docs/printing.md).
    url_secret: str = Field(default="", max_length=256, repr=False)
    # The CSD that signs the company's global CFDIs; without one, the sandbox upstream
    # signs with a test certificate it makes itself (docs/global-invoice.md).
    csd: CsdConfig | None = None
    # Largest global CFDI: more expired tickets than this in a period make several parts.
    global_max_tickets: int = Field(default=5000, ge=1, le=5000)
    # "" = the [upstream] kind; "facturapi" needs the [companies.facturapi] key.
    upstream: Literal["", "sandbox", "facturapi"] = ""
    facturapi: FacturapiConfig | None = None
    branches: tuple[BranchConfig, ...] = Field(min_length=1, strict=False)

    _branch_index: dict[str, BranchConfig] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._branch_index = {b.id: b for b in self.branches}

    @field_validator("key")
    @classmethod
    def _check_key(cls, v: str) -> str:
        if not _KEY_RE.match(v):
            if len(v) < 8:
                raise _problem(f"is {len(v)} characters long; it must have 8 to 64 (40 random hex characters is typical)")
            if len(v) > 64:
                raise _problem(f"is {len(v)} characters long; it must have 8 to 64")
            raise _bad_characters(v, shown=False)
        return v

    @field_validator("username")
    @classmethod
    def _check_username(cls, v: str) -> str:
        if ":" in v:
            raise _problem(f"{_show(v)} must not contain ':' (HTTP Basic authentication cannot carry it)")
        return v

    @field_validator("password_hash")
    @classmethod
    def _check_password_hash(cls, v: str) -> str:
        if v and not passwords.is_hash(v):
            raise _problem('is not a hash made by `ticket-agent hash-password` (it starts with "scrypt:" or "pbkdf2:")')
        return v

    @field_validator("rfc")
    @classmethod
    def _check_rfc(cls, v: str) -> str:
        rfc = v.strip().upper()
        m = _RFC_RE.match(rfc)
        if not m:
            raise _problem(
                f"{_show(v)} is not a valid RFC: expected 3 letters (company) or 4 letters (person), "
                'a date YYMMDD and a 3-character homoclave, e.g. "EKU9003173C9"'
            )
        if rfc in _GENERIC_RFCS:
            raise _problem(f"{_show(v)} is {_GENERIC_RFCS[rfc]}; use the company's own RFC")
        month, day = int(m.group(3)), int(m.group(4))
        if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(2000, month)[1]):
            raise _problem(f"{_show(v)} is not a valid RFC: {m.group(2)}{m.group(3)}{m.group(4)} is not a date (YYMMDD)")
        return rfc

    @field_validator("legal_name")
    @classmethod
    def _check_legal_name(cls, v: str) -> str:
        return _not_blank(v)

    @field_validator("periodicity")
    @classmethod
    def _check_periodicity(cls, v: str, info: ValidationInfo) -> str:
        regime = info.data.get("tax_regime")
        if v == "two_months" and regime is not None and regime != "621":
            raise _problem(
                f'"two_months" is only allowed when tax_regime is "621" (Incorporación Fiscal); '
                f"this company has tax_regime {_show(regime)}"
            )
        return v

    @field_validator("portal_url")
    @classmethod
    def _check_portal_url(cls, v: str) -> str:
        allowed = " ".join("{%s}" % p for p in PORTAL_PLACEHOLDERS)
        try:
            parts = list(string.Formatter().parse(v))
        except ValueError:
            raise _problem(f"has an unmatched {{ or }}; allowed placeholders are {allowed}") from None
        for _literal, field, spec, conversion in parts:
            if field is None:
                continue
            if field == "" or field.isdigit():
                raise _problem(f"has an empty or numbered placeholder {{{field}}}; allowed placeholders are {allowed}")
            if field not in PORTAL_PLACEHOLDERS:
                raise _problem(f"unknown placeholder {{{field}}}; allowed placeholders are {allowed}")
            if spec or conversion:
                raise _problem(f"placeholder {{{field}}} must be written plainly, without ! or : options")
        sample = v.format(company="c", branch="b", ticket="t", total="1.00", date="2024-01-31")
        u = urlsplit(sample)
        if any(c.isspace() for c in sample) or u.scheme not in ("http", "https") or not u.netloc:
            raise _problem(
                f"{_show(v)} is not an http:// or https:// address, e.g. "
                '"https://facturacion.example.com/{company}/{branch}/{ticket}"'
            )
        return v

    @field_validator("branches")
    @classmethod
    def _check_unique_branches(cls, v: tuple[BranchConfig, ...]) -> tuple[BranchConfig, ...]:
        return _unique(
            v, "id", lambda value, first: f"branch id {value} is already used by branches[{first}] of this company"
        )

    @model_validator(mode="after")
    def _one_password(self) -> "CompanyConfig":
        if bool(self.password) == bool(self.password_hash):
            raise _problem("give the POS password as exactly one of password or password_hash")
        return self

    @model_validator(mode="after")
    def _facturapi_key(self) -> "CompanyConfig":
        if self.upstream == "facturapi" and self.facturapi is None:
            raise _problem("upstream \"facturapi\" needs [companies.facturapi] with api_key_file or api_key_env")
        return self

    def branch(self, branch_id: str) -> BranchConfig | None:
        return self._branch_index.get(branch_id)

    def check_credentials(self, username: str, password: str) -> bool:
        """Constant-time comparison of HTTP Basic credentials (a hashed password costs a
        key derivation: agent.logins remembers the ones that already matched)."""
        u = secrets.compare_digest(username.encode("utf-8"), self.username.encode("utf-8"))
        if self.password_hash:
            p = passwords.matches(self.password_hash, password)
        else:
            p = secrets.compare_digest(password.encode("utf-8"), self.password.encode("utf-8"))
        return u and p

    def portal_link(self, *, branch: str, ticket: str, total: Any = "", date: Any = "") -> str:
        """``portal_url`` with its placeholders filled (each value URL-quoted)."""
        values = {"company": self.key, "branch": branch, "ticket": ticket, "total": total, "date": date}
        return self.portal_url.format(**{k: quote(str(val), safe="") for k, val in values.items()})


def _unique(items: tuple, attr: str, describe) -> tuple:
    """Refuse the first repeated value of `attr`, pointing at the repeat."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, attr)
        if value in seen:
            raise _problem(describe(_show(value), seen[value]), at=(i, attr))
        seen[value] = i
    return items


class Config(_Model):
    """The whole file.  Build it with :func:`load_config` / :func:`default_config`."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    companies: tuple[CompanyConfig, ...] = Field(min_length=1, strict=False)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _is_demo: bool = PrivateAttr(default=False)
    _source: Path | None = PrivateAttr(default=None)
    _company_index: dict[str, CompanyConfig] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._company_index = {c.key: c for c in self.companies}
        base = context.get("base_dir") if isinstance(context, Mapping) else None
        if base is not None:
            self._base_dir = Path(base)

    @field_validator("companies")
    @classmethod
    def _check_unique_companies(cls, v: tuple[CompanyConfig, ...]) -> tuple[CompanyConfig, ...]:
        return _unique(
            v,
            "key",
            lambda value, first: f"company key {value} is already used by companies[{first}]; "
            "each company needs its own key",
        )

    @property
    def is_demo(self) -> bool:
        """True for the embedded demo defaults (not for a real file)."""
        return self._is_demo

    @property
    def base_dir(self) -> Path:
        """Directory relative paths are resolved against (absolute)."""
        return self._base_dir

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from (None for the demo)."""
        return self._source

    @property
    def data_dir_path(self) -> Path:
        return self.resolve_path(self.server.data_dir)

    def resolve_path(self, p: str | os.PathLike[str]) -> Path:
        """Absolute path for ``p``; relative paths are taken from :attr:`base_dir`."""
        return _resolve_against(self._base_dir, p)

    def company(self, key: str) -> CompanyConfig | None:
        return self._company_index.get(key)

    def upstream_of(self, company: CompanyConfig) -> str:
        """The upstream kind a company uses: its own choice, else [upstream].kind."""
        return company.upstream or self.upstream.kind

    @model_validator(mode="after")
    def _facturapi_companies_have_keys(self) -> "Config":
        for i, company in enumerate(self.companies):
            if self.upstream_of(company) == "facturapi" and company.facturapi is None:
                raise _problem(
                    f"companies[{i}] uses the facturapi upstream and needs [companies.facturapi] "
                    "with api_key_file or api_key_env"
                )
        return self


# --------------------------------------------------------------------------
# pydantic errors -> plain English

_SECTION_NAMES: dict[type[BaseModel], str] = {
    Config: "the top level of the file",
    ServerConfig: "[server]",
    UpstreamConfig: "[upstream]",
    FacturapiConfig: "[companies.facturapi]",
    CompanyConfig: "[[companies]]",
    BranchConfig: "[[companies.branches]]",
}


def _field_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``Model`` / ``tuple[Model, ...]`` / ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _field_model(model.model_fields[part].annotation)
    return model


def _field_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, str | None]:
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None, None
    i = max(i for i, p in enumerate(loc) if isinstance(p, str))
    return _model_at(loc[:i]), loc[i]


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    msg = "unknown key"
    if model is None:
        return msg
    if model is Config and key == "branches":
        return msg + "; branches belong to a company: write [[companies.branches]] after its [[companies]] table"
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return msg + f' (did you mean "{close[0]}"?)'
    others = [(o, sec) for o, sec in _SECTION_NAMES.items() if o is not model]
    for other, section in others:
        if key in other.model_fields:
            hint = f"; {key} is a setting of {section}"
            if model is BranchConfig and other is CompanyConfig:
                hint += ", so write it before the first [[companies.branches]] of this company"
            elif model is Config:
                hint += f", so write it after the {section} line"
            return msg + hint
    for other, section in others:
        close = difflib.get_close_matches(key, list(other.model_fields), n=1, cutoff=0.75)
        if close:
            return msg + f' (did you mean "{close[0]}"? that is a setting of {section})'
    return msg


def _literal_choices(loc: tuple[Any, ...]) -> tuple[str, ...]:
    model, name = _field_at(loc)
    if model is None or name not in model.model_fields:
        return ()
    return tuple(str(a) for a in typing.get_args(model.model_fields[name].annotation))


def _translate(err: Mapping[str, Any]) -> tuple[tuple[Any, ...], str]:
    loc = tuple(err.get("loc", ()))
    typ = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    secret = bool(loc) and loc[-1] == "password"
    got = "" if secret else f" (got {_show(value)})"

    if "problem" in ctx:
        return loc + tuple(ctx.get("at") or ()), str(ctx["problem"])
    if typ == "extra_forbidden":
        return loc, _unknown_key_message(loc)
    if typ == "missing":
        if loc == ("companies",):
            return loc, "at least one [[companies]] table is required"
        if loc and loc[-1] == "branches":
            return loc, "this company needs at least one [[companies.branches]] table"
        return loc, "required key is missing"
    if typ == "too_short" and loc == ("companies",):
        return loc, "at least one [[companies]] table is required"
    if typ == "too_short" and loc and loc[-1] == "branches":
        return loc, "this company needs at least one [[companies.branches]] table"
    if typ == "string_type":
        example = f'"{value}"' if isinstance(value, (int, float)) and not isinstance(value, bool) else '"..."'
        if secret:
            return loc, f"must be text in quotes, e.g. {loc[-1]} = \"...\""
        return loc, f"must be text in quotes, e.g. {loc[-1]} = {example}; got {_kind(value)}"
    if typ in ("int_type", "int_parsing", "int_from_float"):
        return loc, f"must be a whole number without quotes; got {_kind(value)}"
    if typ in ("model_type", "dict_type", "model_attributes_type"):
        model = _model_at(loc)
        section = _SECTION_NAMES.get(model, "a table") if model else "a table"
        return loc, f"must be a table ({section}); got {_kind(value)}"
    if typ in ("tuple_type", "list_type"):
        if loc and loc[-1] == "companies":
            return loc, "must be a list of tables: write [[companies]] (two brackets), not [companies]"
        if loc and loc[-1] == "branches":
            return loc, "must be a list of tables: write [[companies.branches]] (two brackets)"
        return loc, f"must be a list; got {_kind(value)}"
    if typ == "literal_error":
        choices = _literal_choices(loc)
        listed = ", ".join(f'"{c}"' for c in choices) if choices else str(ctx.get("expected", ""))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in choices:
            return loc, f'must be written in quotes: {loc[-1]} = "{value}"'
        return loc, f"must be one of {listed}{got}"
    if typ == "string_too_short":
        n = ctx.get("min_length", 1)
        return loc, "must not be empty" if n == 1 else f"must have at least {n} characters"
    if typ == "string_too_long":
        return loc, f"must have at most {ctx.get('max_length')} characters" + ("" if secret else f" (it has {len(value)})")
    if typ in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        return loc, f"must be at least {bound}{got}"
    if typ in ("less_than_equal", "less_than"):
        bound = ctx.get("le", ctx.get("lt"))
        return loc, f"must be at most {bound}{got}"
    if typ == "bool_type":
        return loc, f"must be true or false; got {_kind(value)}"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return loc, msg + ("" if secret else f"{got}")


def _problems_from(exc: ValidationError) -> list[str]:
    errors = exc.errors(include_url=False)
    locs = [tuple(e.get("loc", ())) for e in errors]
    out: list[str] = []
    for err, loc in zip(errors, locs):
        # "list should have at least 1 item after validation" is noise when an
        # item of that list already failed.
        if err.get("type") == "too_short" and any(o[: len(loc)] == loc and len(o) > len(loc) for o in locs):
            continue
        where, text = _translate(err)
        line = f"{_format_loc(where)}: {text}"
        if line not in out:
            out.append(line)
    return out


# --------------------------------------------------------------------------
# loading

_TOML_POS_RE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")
_TOML_HINTS = (
    ("Invalid value", "text values need double quotes, e.g. name = \"Centro\""),
    ("Expected newline or end of document", "one setting per line; text values need double quotes"),
    ("Cannot overwrite a value", "this key is set twice"),
    ("twice", "this table header appears twice; use [[...]] for repeated tables like [[companies]]"),
)


def _toml_problem(text: str, err: tomllib.TOMLDecodeError) -> str:
    message = str(err)
    m = _TOML_POS_RE.search(message)
    reason = message[: m.start()] if m else message
    hint = next((h for needle, h in _TOML_HINTS if needle in reason), "")
    reason = reason + (f" ({hint})" if hint else "")
    if m and m.group(1):
        lineno, col = int(m.group(1)), int(m.group(2))
        lines = text.splitlines()
        src = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        where = f"line {lineno}, column {col}"
        return f"{where}: {reason}" + (f"  [the line reads: {src}]" if src else "")
    if m:
        return f"end of file: {reason} (something was left open: a quote, [ or {{)"
    return reason


def _build(data: Mapping[str, Any], *, base_dir: Path, source: str, path: Path | None, demo: bool) -> Config:
    try:
        cfg = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigError(source, _problems_from(e)) from None
    cfg._base_dir = base_dir
    cfg._source = path
    cfg._is_demo = demo
    return cfg


def _load_file(path: Path, origin: str) -> Config:
    shown = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, [f"file not found ({origin})"], "cannot be used") from None
    except IsADirectoryError:
        raise ConfigError(shown, [f"this is a folder, not a file ({origin})"], "cannot be used") from None
    except PermissionError:
        raise ConfigError(shown, ["permission denied: the agent's user cannot read this file"], "cannot be used") from None
    except OSError as e:
        raise ConfigError(shown, [f"cannot read the file: {e.strerror or e}"], "cannot be used") from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some Windows editors add
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            shown, [f"line {line}: the file is not UTF-8 text; save it as UTF-8"], "cannot be used"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(shown, [_toml_problem(text, e)], "is not valid TOML") from None
    return _build(data, base_dir=path.parent, source=shown, path=path, demo=False)


def load_config(path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration.

    ``path`` given -> that file; else the file named by ``TICKET_AGENT_CONFIG``
    in ``env`` (default ``os.environ``; an empty value counts as unset); else
    the embedded demo defaults (``is_demo`` True).  Raises :class:`ConfigError`.
    """
    if env is None:
        env = os.environ
    if path is not None and str(path) != "":
        origin = "given with --config"
        chosen: str | os.PathLike[str] = path
    elif env.get(DEFAULT_CONFIG_ENV):
        origin = f"named by the {DEFAULT_CONFIG_ENV} environment variable"
        chosen = env[DEFAULT_CONFIG_ENV]
    else:
        return default_config()
    return _load_file(Path(os.path.abspath(Path(chosen).expanduser())), origin)


# The demo defaults.  Credentials tepox/tepox and these ids match the curl
# examples of the POS contract.  For trying the agent only.
_DEMO_TOML = """\
[server]
listen = "0.0.0.0:8572"
data_dir = "data"
public_url = ""
threads = 16
max_body_kb = 1024

[upstream]
kind = "sandbox"

[[companies]]
key = "b391655ac2242d85ddd36d37b482259b1b7dfc1c"
username = "tepox"
password = "tepox"
rfc = "EKU9003173C9"
legal_name = "ESCUELA KEMPER URGATE"
tax_regime = "601"
periodicity = "day"
self_invoice_days = 7
portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"

[[companies.branches]]
id = "dsfhjkajslfd45646412"
name = "Centro"
postal_code = "68050"
timezone = "America/Mexico_City"
global_series = "FG"
printer = "file:data/prints"

[[companies.branches]]
id = "0dd6aebbea85662fd2fe2f76ce4258b3"
name = "Norte"
postal_code = "68000"
timezone = "America/Mexico_City"
global_series = "FN"
printer = "file:data/prints"
"""


def default_config() -> Config:
    """The embedded demo configuration (``is_demo`` True; paths from the cwd)."""
    return _build(tomllib.loads(_DEMO_TOML), base_dir=Path.cwd(), source=_DEMO_SOURCE, path=None, demo=True)


_STARTER_TEMPLATE = """\
# ticket-agent configuration.  Reference: docs/configuration.md
# Text values go in "double quotes"; numbers do not.  Lines starting with # are comments.
# Relative paths are relative to the folder holding this file.

[server]
# Address and port the POS terminals connect to ("[::]:8572" for IPv6).
listen = "0.0.0.0:8572"
# Folder for the database, ticket previews and downloaded XML/PDF files.
data_dir = "data"
# Base of download links, e.g. "https://tienda.example.com"; "" = the address the request came to.
public_url = ""
# Requests handled at the same time (1-256).
threads = 16
# Largest request body accepted, in KB (1-65536).
max_body_kb = 1024

[upstream]
# Who stamps (timbra) the invoices: "sandbox" (local test stamping, no network) or "facturapi".
kind = "sandbox"
# Facturapi's API address; change it only for a test double.
facturapi_url = "https://www.facturapi.io/v2"
# Seconds one request to Facturapi may take (at most 300).
timeout = 15
# Receipts sent to Facturapi at the same time, per company (1-32).
concurrency = 4
# Seconds a new slip waits for Facturapi's self-invoice link before printing the portal_url (0-60).
qr_wait = 3
# Seconds between two checks of what customers invoiced in Facturapi (10-86400).
poll_every = 300

[database]
# "" keeps the tickets in a SQLite file in data_dir (right for one store PC). For several agent
# processes on one PostgreSQL server: "postgresql://agent@db.example.com:5432/tickets"; the
# password goes in the agent user's ~/.pgpass or the PGPASSWORD variable, not here.
url = ""

[[companies]]
# The company's token in the POS URLs ({Token}/{keyEmpresa}); its identity in the local store, do not change it later.
key = "%(key)s"
# User name the POS sends with HTTP Basic authentication (no ':').
username = "pos"
# Password the POS sends with HTTP Basic authentication.
password = "%(password)s"
# Or the password's hash from `ticket-agent hash-password` here, and password = "".
password_hash = ""
# The company's RFC, in uppercase (this is SAT's test RFC: replace it).
rfc = "EKU9003173C9"
# Legal name (razón social) exactly as on the Constancia de Situación Fiscal.
legal_name = "ESCUELA KEMPER URGATE"
# SAT c_RegimenFiscal code of the company, e.g. "601", "612", "626".
tax_regime = "601"
# How often the factura global is issued: "day", "week", "fortnight", "month" or "two_months" (regime 621 only).
periodicity = "day"
# Days a customer has to invoice a ticket themselves before it goes into the factura global (0-365).
self_invoice_days = 7
# Self-invoicing page printed as a QR on each ticket; may use {company} {branch} {ticket} {total} {date}.
portal_url = "https://facturacion.example.com/{company}/{branch}/{ticket}"
# Secret to sign the portal URL of each ticket so the portal can spot typed-in tickets; "" = off.
url_secret = ""
# Most tickets in one global CFDI (1-5000); a period with more gets several global CFDIs.
global_max_tickets = 5000

# Who stamps this company's invoices: "" = the [upstream] kind, "sandbox" or "facturapi".
upstream = ""

# The company's Facturapi secret key (sk_test_... or sk_live_...), needed with upstream "facturapi".
# Put it in a file readable only by the agent, or in an environment variable; never here.
# [companies.facturapi]
# The file holding the key.
# api_key_file = "secrets/facturapi.key"
# Or the environment variable holding it (use one of the two).
# api_key_env = "FACTURAPI_KEY"

# The company's CSD (certificado de sello digital) that signs its global CFDIs, as SAT issued
# it. Without it the sandbox upstream signs with a test certificate of its own.
# [companies.csd]
# The certificate, DER .cer file.
# cer = "csd/EKU9003173C9.cer"
# The encrypted private key, DER .key file.
# key = "csd/EKU9003173C9.key"
# The key's password (or use password_file instead).
# password = ""
# A file holding the key's password, readable only by the agent.
# password_file = "csd/password.txt"

[[companies.branches]]
# The branch (sucursal) id the POS sends; letters, digits, _ and - only.
id = "matriz"
# Branch name shown on slips and reports.
name = "Matriz"
# Postal code of the branch (LugarExpedicion of its invoices), 5 digits.
postal_code = "68050"
# Time zone of the branch, e.g. "America/Mexico_City", "America/Cancun", "America/Tijuana".
timezone = "America/Mexico_City"
# Serie of this branch's global invoices (1-25 characters).
global_series = "FG"
# Where slips are printed: "tcp://host:9100", "usb://VID:PID", "serial:///dev/ttyS0?baudrate=9600",
# "cups://Queue", "file:/dev/usb/lp0", a folder "file:data/prints" (files + previews), or "none".
printer = "file:data/prints"
# More printers, one per POS lane; the POS picks one with "impresora": "caja1".
printers = {}
# Paper roll width in mm: 80 or 58.
paper_mm = 80
# true: the printer draws the QR itself (GS ( k); false for old printers: the QR goes as an image.
native_qr = true
# QR module size in printer dots (1-16); 6 scans well on 58 and 80 mm rolls.
qr_size = 6
# QR error correction: "L", "M", "Q" or "H".
qr_error_correction = "M"
"""


def starter_config_text(rng: Any = secrets) -> str:
    """The commented starter TOML written by ``ticket-agent init``.

    ``rng`` must provide ``token_hex(n)`` and ``token_urlsafe(n)`` (the
    :mod:`secrets` module by default).  The result loads with
    :func:`load_config`; key is 40 hex characters, user ``pos``, password
    24 URL-safe characters.
    """
    key = rng.token_hex(20)
    password = rng.token_urlsafe(18)
    return _STARTER_TEMPLATE % {"key": key, "password": password}
