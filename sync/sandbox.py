"""The embedded sandbox upstream's stamp: a local TimbreFiscalDigital 1.1 that is never real.

``stamp_sandbox`` does what a PAC does to a signed CFDI 4.0, with no network: it adds a
``tfd:TimbreFiscalDigital`` 1.1 inside ``cfdi:Complemento``. The result has the shape of a
real stamp (it validates against SAT's TimbreFiscalDigitalv11.xsd) but says everywhere that
it is not one:

- ``Leyenda`` (an optional TFD 1.1 attribute) reads ``SANDBOX_LEYENDA``;
- ``NoCertificadoSAT`` is twenty zeros, a number SAT never issues;
- ``SelloSAT`` is NOT a seal: it is the base64 of a SHA-256 digest of the TFD's cadena
  original, which anyone can compute (see ``_selloSAT``).

``RfcProvCertif`` is the fixed value ``SANDBOX_RFC_PROV_CERTIF`` only because the attribute
is required and must look like an RFC; ``is_sandbox_stamp`` never relies on it.

The CFDI's own bytes are kept as they are: the TFD (and, when the CFDI has none, the
``cfdi:Complemento`` around it) is spliced in before the right closing tag, found by byte
offset with expat, so nothing is re-serialised, reordered or re-indented and the emisor's
Sello still verifies. Standard library only.
"""
from __future__ import annotations

import base64
import hashlib
import re
import uuid as uuidlib
import xml.parsers.expat
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

CFDI_NS = "http://www.sat.gob.mx/cfd/4"
TFD_NS = "http://www.sat.gob.mx/TimbreFiscalDigital"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
TFD_SCHEMA_LOCATION = (
    "http://www.sat.gob.mx/TimbreFiscalDigital "
    "http://www.sat.gob.mx/sitio_internet/cfd/TimbreFiscalDigital/TimbreFiscalDigitalv11.xsd"
)

SANDBOX_LEYENDA = "SANDBOX pos-ticket-agent: sin validez fiscal"
SANDBOX_RFC_PROV_CERTIF = "SPR190613I52"
SANDBOX_NO_CERTIFICADO_SAT = "0" * 20

# PACs write FechaTimbrado as the wall time of central Mexico.
STAMP_ZONE = ZoneInfo("America/Mexico_City")

_UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_QNAME_RE = re.compile(rb"<([^\s/>]+)")
_SEP = " "  # expat's namespace separator: names arrive as "uri local"
_COMPROBANTE = CFDI_NS + _SEP + "Comprobante"
_COMPLEMENTO = CFDI_NS + _SEP + "Complemento"
_ADDENDA = CFDI_NS + _SEP + "Addenda"
_TFD = TFD_NS + _SEP + "TimbreFiscalDigital"


@dataclass(frozen=True)
class Stamp:
    uuid: str  # upper case
    stamped_at: datetime  # naive, Mexico City wall time, as written in FechaTimbrado
    xml: bytes  # the CFDI with its Complemento/TimbreFiscalDigital
    production: bool = False


def stamp_sandbox(cfdi_xml: bytes, *, now: datetime | None = None, uuid: str | None = None) -> Stamp:
    """Stamp a signed CFDI 4.0 locally; raises ValueError if it is not one or is already stamped.

    ``now``: an aware datetime is converted to Mexico City time; a naive one is taken as
    Mexico City wall time already. Microseconds are dropped (FechaTimbrado has seconds).
    ``uuid``: for tests; a random uuid4 otherwise. Either way it is written in upper case.
    """
    if not isinstance(cfdi_xml, (bytes, bytearray)):
        raise TypeError("cfdi_xml must be bytes")
    data = bytes(cfdi_xml)
    doc = _scan(data)

    if uuid is None:
        uuid = str(uuidlib.uuid4())
    if not _UUID_RE.fullmatch(uuid):
        raise ValueError(f"UUID inválido: {uuid!r}")
    uuid = uuid.upper()

    if now is None:
        stamped_at = datetime.now(STAMP_ZONE)
    elif now.tzinfo is not None:
        stamped_at = now.astimezone(STAMP_ZONE)
    else:
        stamped_at = now
    stamped_at = stamped_at.replace(tzinfo=None, microsecond=0)

    attrs = {
        "Version": "1.1",
        "UUID": uuid,
        "FechaTimbrado": stamped_at.isoformat(timespec="seconds"),
        "RfcProvCertif": SANDBOX_RFC_PROV_CERTIF,
        "Leyenda": SANDBOX_LEYENDA,
        "SelloCFD": doc.sello,
        "NoCertificadoSAT": SANDBOX_NO_CERTIFICADO_SAT,
    }
    attrs["SelloSAT"] = _selloSAT(attrs)
    tfd = (
        f'<tfd:TimbreFiscalDigital xmlns:tfd="{TFD_NS}" xmlns:xsi="{XSI_NS}" '
        f'xsi:schemaLocation="{TFD_SCHEMA_LOCATION}"'
        + "".join(f' {name}="{_attr(value)}"' for name, value in attrs.items())
        + "/>"
    ).encode("utf-8")

    complemento = doc.prefix + "Complemento"
    if doc.complemento_end is not None:
        # Inside the existing Complemento, after whatever complements it already holds.
        at = doc.complemento_end
        if doc.complemento_empty:
            # <cfdi:Complemento/>: open it up, keeping the start tag's own bytes.
            start_tag = data[doc.complemento_start : doc.complemento_end]
            head = start_tag[: start_tag.rindex(b"/>")].rstrip() + b">"
            new = data[: doc.complemento_start] + head + tfd + b"</" + complemento.encode() + b">" + data[at:]
        else:
            new = data[:at] + tfd + data[at:]
    else:
        # A new Complemento: the last child, or just before an Addenda (Anexo 20's order).
        at = doc.addenda_start if doc.addenda_start is not None else doc.root_end
        block = b"<" + complemento.encode() + b">" + tfd + b"</" + complemento.encode() + b">"
        new = data[:at] + block + data[at:]

    _check_stamped(new, uuid)
    return Stamp(uuid=uuid, stamped_at=stamped_at, xml=new, production=False)


def is_sandbox_stamp(xml: bytes) -> bool:
    """True when the CFDI carries a TimbreFiscalDigital made by ``stamp_sandbox``.

    False when it has no TFD at all (unstamped) or a TFD that is not the sandbox's; that
    does not make the stamp real, only not ours. ValueError if ``xml`` is not XML.
    """
    for tfd in _tfds(xml):
        if tfd.get("Leyenda") == SANDBOX_LEYENDA or tfd.get("NoCertificadoSAT") == SANDBOX_NO_CERTIFICADO_SAT:
            return True
    return False


def tfd_cadena_original(attrs: dict[str, str]) -> str:
    """SAT's cadena original of a TFD 1.1 (cadenaoriginal_TFD_1_1.xslt, in Python)."""
    values = [attrs["Version"], attrs["UUID"], attrs["FechaTimbrado"], attrs["RfcProvCertif"]]
    if attrs.get("Leyenda"):
        values.append(attrs["Leyenda"])
    values += [attrs["SelloCFD"], attrs["NoCertificadoSAT"]]
    return "||" + "|".join(" ".join(v.split()) for v in values) + "||"


def _selloSAT(attrs: dict[str, str]) -> str:
    # NOT an RSA seal: a real SelloSAT is SAT's signature over the TFD's cadena original with
    # the certificate named in NoCertificadoSAT. The sandbox has no such key, so it writes a
    # plain SHA-256 digest of that cadena (base64): consistent and checkable, never valid.
    digest = hashlib.sha256(tfd_cadena_original(attrs).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def _attr(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        .replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")
    )


@dataclass
class _Doc:
    prefix: str = ""  # "cfdi:" (with the colon) or "" when cfd/4 is the default namespace
    version: str | None = None
    sello: str = ""
    root_end: int | None = None
    complemento_start: int | None = None
    complemento_end: int | None = None
    complemento_empty: bool = False
    addenda_start: int | None = None
    has_tfd: bool = False
    children: set | None = None


def _scan(data: bytes) -> _Doc:
    """Byte offsets of the places a stamp can go, and the checks a PAC makes first."""
    doc = _Doc(children=set())
    stack: list[str] = []
    parser = xml.parsers.expat.ParserCreate(namespace_separator=_SEP)
    encoding: list[str | None] = [None]

    def decl(version, enc, standalone):
        encoding[0] = enc

    def start(name, attrs):
        index = parser.CurrentByteIndex
        depth = len(stack)
        if depth == 0:
            if name != _COMPROBANTE:
                raise ValueError("no es un CFDI 4.0: el elemento raíz no es cfdi:Comprobante (http://www.sat.gob.mx/cfd/4)")
            qname = _QNAME_RE.match(data, index).group(1).decode("utf-8")
            doc.prefix = qname[: qname.index(":") + 1] if ":" in qname else ""
            doc.version = attrs.get("Version")
            doc.sello = attrs.get("Sello", "")
        elif depth == 1:
            doc.children.add(name)
            if name == _COMPLEMENTO:
                if doc.complemento_start is not None:
                    raise ValueError("el CFDI tiene más de un cfdi:Complemento")
                doc.complemento_start = index
            elif name == _ADDENDA and doc.addenda_start is None:
                doc.addenda_start = index
        if name == _TFD and depth == 2 and stack[1] == _COMPLEMENTO:
            doc.has_tfd = True
        stack.append(name)

    def end(name):
        index = parser.CurrentByteIndex
        stack.pop()
        depth = len(stack)
        if depth == 0:
            doc.root_end = index
        elif depth == 1 and name == _COMPLEMENTO:
            doc.complemento_end = index
            # expat reports the end of <x/> at the byte after it, not at a "</x".
            qname = _QNAME_RE.match(data, doc.complemento_start).group(1)
            doc.complemento_empty = not re.compile(rb"</" + re.escape(qname) + rb"[\s>]").match(data, index)

    parser.XmlDeclHandler = decl
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise ValueError(f"el CFDI no es XML bien formado: {exc}") from None
    if encoding[0] is not None and encoding[0].lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise ValueError(f"un CFDI se codifica en UTF-8, no {encoding[0]}")
    if doc.version != "4.0":
        raise ValueError(f"no es un CFDI 4.0 (Version={doc.version!r})")
    if not doc.sello.strip():
        raise ValueError("el CFDI no está sellado (falta el atributo Sello): un PAC no lo timbraría")
    missing = [n for n in ("Emisor", "Receptor", "Conceptos") if CFDI_NS + _SEP + n not in doc.children]
    if missing:
        raise ValueError("al CFDI le falta cfdi:" + ", cfdi:".join(missing))
    if doc.has_tfd:
        raise ValueError("el CFDI ya está timbrado (ya tiene un TimbreFiscalDigital)")
    return doc


def _tfds(xml_bytes: bytes) -> list[dict[str, str]]:
    """The attributes of each Comprobante/Complemento/TimbreFiscalDigital."""
    found: list[dict[str, str]] = []
    stack: list[str] = []
    parser = xml.parsers.expat.ParserCreate(namespace_separator=_SEP)

    def start(name, attrs):
        if name == _TFD and stack[1:] == [_COMPLEMENTO] and stack[0] == _COMPROBANTE:
            found.append(dict(attrs))
        stack.append(name)

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda name: stack.pop()
    try:
        parser.Parse(xml_bytes, True)
    except xml.parsers.expat.ExpatError as exc:
        raise ValueError(f"no es XML bien formado: {exc}") from None
    return found


def _check_stamped(new: bytes, uuid: str) -> None:
    # The splice is by byte offsets from a real parse, so this cannot fail on a CFDI that
    # passed _scan; it stays as the promise that the output is well formed and stamped once.
    tfds = _tfds(new)
    if len(tfds) != 1 or tfds[0].get("UUID") != uuid:
        raise AssertionError("sandbox stamp: the stamped CFDI does not carry exactly one TFD")
