"""Header names the consumer writes, and reading AMQP headers as text."""

from collections.abc import Mapping

HEADER_REASON = "x-spakky-dead-letter-reason"
"""Why a message was dead-lettered: malformed_json, schema_mismatch, handler_error, or an
auth outcome."""

HEADER_ERROR_TYPE = "x-spakky-error-type"
HEADER_ERROR_MESSAGE = "x-spakky-error-message"
HEADER_ORIGINAL_QUEUE = "x-spakky-original-queue"
HEADER_DEAD_LETTERED_AT = "x-spakky-dead-lettered-at"
HEADER_HANDLERS = "x-spakky-handlers"
"""Comma-separated handler ids a message is still owed to; absent means every handler."""

HEADER_ATTEMPT = "x-spakky-attempt"


def text_headers(headers: Mapping[str, object] | None) -> dict[str, str]:
    """AMQP headers as strings: bytes are decoded as UTF-8, numbers and booleans
    written out; tables, arrays and bytes that are not UTF-8 are left out."""
    if not headers:
        return {}
    text: dict[str, str] = {}
    for key, value in headers.items():
        if isinstance(value, str):
            text[key] = value
        elif isinstance(value, bytes | bytearray):
            try:
                text[key] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                continue
        elif isinstance(value, bool | int | float):
            text[key] = str(value)
    return text
