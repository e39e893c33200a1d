"""Every text the POS contract answers with, in one place.

The texts marked "contract" are copied from the autofacturación contract and POS clients
compare them literally: spacing and the missing accents are part of it. The others are
ours, in the same Spanish, and always name the field that is wrong.
"""
from __future__ import annotations

import json
from decimal import Decimal

# contract
SAVED = "se guardo correctamente"
BAD_TICKET_NUMBER = "El no. de ticket no contiene el formato correcto."
NO_CFDIS = "No hay cfdi generados"


def no_cfdi_yet(number: str, branch: str) -> str:  # contract
    return f"Ticket numero:{number} , sucursal: {branch}, aun no genera cfdi"


def expired(number: str, branch: str) -> str:  # contract
    return f"Se expiro no_ticket: {number} sucursal : {branch}"


def ticket_missing(number: str, branch: str) -> str:  # contract
    return f"Ticket numero: {number}, sucursal: {branch}, no existe"


# ours
MISSING = "es requerido"
AUTH_MISSING = "Falta el encabezado Authorization con usuario y contraseña (Basic)."
AUTH_MALFORMED = "El encabezado Authorization no es Basic usuario:contraseña en base64."
AUTH_WRONG = "Usuario o contraseña incorrectos para esta empresa."
NOT_JSON_TYPE = "content-type debe ser application/json."
BODY_NOT_UTF8 = "El cuerpo de la petición no está en UTF-8."
BODY_NOT_OBJECT = "El cuerpo debe ser un objeto JSON con los campos del ticket."
NOT_FOUND = "Ruta no encontrada."
INTERNAL = "Error interno del agente; el ticket no se guardó. Intente de nuevo."


def body_not_json(detail: str) -> str:
    return f"El cuerpo no es JSON válido: {detail}."


def body_too_large(limit_kb: int) -> str:
    return f"El cuerpo de la petición excede el límite de {limit_kb} KB."


def method_not_allowed(method: str, allowed: str) -> str:
    return f"Método {method} no permitido en esta ruta; use {allowed}."


def too_many_attempts(seconds: int) -> str:
    return (
        "Demasiados intentos de acceso fallidos desde esta dirección. "
        f"Intente de nuevo en {seconds} segundos."
    )


def storage_unavailable() -> str:
    return (
        "No se pudo guardar en la base de datos del agente (disco lleno, sin permisos o "
        "detenido); el ticket no se guardó. Intente de nuevo más tarde."
    )


def field_error(field: str, problem: str) -> str:
    return f"{field}: {problem}"


def unknown_branch(branch: str) -> str:
    return f"sucursal: la sucursal {branch} no existe para esta empresa"


def unknown_printer(name: str, branch: str, known: list[str]) -> str:
    choices = ", ".join(known) if known else "ninguna configurada"
    return f"impresora: la impresora {name} no existe en la sucursal {branch} (impresoras: {choices})"


def no_printer(branch: str) -> str:
    return f"La sucursal {branch} no tiene impresora configurada (printer = \"none\")."


def reprint_queued(number: str, branch: str) -> str:
    return f"Se reimprimira el ticket {number} de la sucursal {branch}"


def format_invalid(value: str) -> str:
    return f"formato: debe ser escpos o png (se recibió {_show(value)})"


def fecha_format(value: object) -> str:
    return f"fecha: debe tener el formato AAAA-MM-DDTHH:MM:SS (se recibió {_show(value)})"


def monto_invalid(value: object) -> str:
    return f"monto: debe ser un importe positivo con a lo más 2 decimales (se recibió {_show(value)})"


def monto_mismatch(monto, insumo_total) -> str:
    return f"monto: {monto:.2f} no coincide con el Total del insumo ({insumo_total:.2f})"


def insumo_invalid(reason: str) -> str:
    return f"insumo: inválido, {reason}"


def both_fecha_and_data() -> str:
    return "fecha: se recibieron fecha y data con valores distintos; envíe solo fecha"


def replace_refused(number: str, branch: str, status: str, synced: bool, cfdi_uuid: str | None) -> str:
    prefix = f"El ticket {number} de la sucursal {branch} ya no se puede reemplazar"
    if status == "FACTURADO":
        return f"{prefix}: ya fue facturado (CFDI {cfdi_uuid})."
    if status == "GLOBAL":
        return f"{prefix}: ya está en la factura global (CFDI {cfdi_uuid})."
    if status == "EXPIRADO":
        return f"{prefix}: ya expiró."
    if synced:
        return f"{prefix}: ya se envió al servicio de facturación."
    return f"{prefix}: estado {status}."


def expire_refused(number: str, branch: str, cfdi_uuid: str | None) -> str:
    return f"El ticket {number} de la sucursal {branch} ya fue facturado (CFDI {cfdi_uuid}); no se puede expirar."


# downloads and cancellation
def cfdi_missing(cfdi_id: str) -> str:
    return f"No existe el CFDI con idCfdi {cfdi_id}."


def cfdi_uuid_missing(uuid: str) -> str:
    return f"No existe el CFDI con uuid {uuid}."


def representation_invalid(value: str) -> str:
    return f"representacion: debe ser XML, PDF o XML_PDF (se recibió {_show(value)})"


def production_invalid(value: str) -> str:
    return f"produccion: debe ser true o false (se recibió {_show(value)})"


def cfdi_file_missing(cfdi_id: str, kind: str) -> str:
    return f"El CFDI {cfdi_id} no tiene {kind}."


def cancel_use_post() -> str:
    return (
        "Para cancelar un CFDI use POST, PUT o DELETE en esta ruta, con motivo (01, 02, 03 o 04) "
        "y, para el motivo 01, folioSustitucion."
    )


def motive_invalid(value: object) -> str:
    return f"motivo: debe ser 01, 02, 03 o 04 (se recibió {_show(value)})"


def substitute_required() -> str:
    return "folioSustitucion: es requerido con el motivo 01 y debe ser el UUID del CFDI que sustituye"


def cancelled(uuid: str, motive: str) -> str:
    return f"Se cancelo el cfdi: {uuid} motivo: {motive}"


def already_cancelled(uuid: str) -> str:
    return f"El cfdi {uuid} ya estaba cancelado"


def cancel_pending(uuid: str) -> str:
    return f"La cancelacion del cfdi {uuid} esta en proceso; el receptor debe aceptarla"


def cancel_failed(uuid: str, reason: str) -> str:
    return f"No se pudo cancelar el cfdi {uuid}: {reason}"


def query_param_invalid(field: str) -> str:
    return f"{field}: no contiene el formato correcto"


def _show(value: object) -> str:
    if isinstance(value, str):
        text = f'"{value}"'
    elif isinstance(value, (int, Decimal)) or value is None:
        text = str(value) if value is not None else "null"
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
