"""Protocol v1: one UTF-8 JSON document per ZeroMQ frame.

Every request is an envelope::

    {"v": 1, "type": "report_request", "job_id": "run-1", "client_id": "9f1c...", "seq": 7,
     "body": {...}}

and every reply mirrors it with ``status`` "ok" or "error"::

    {"v": 1, "type": "report_reply", "job_id": "run-1", "seq": 7, "status": "ok", "body": {...}}
    {"v": 1, "type": "error_reply", ..., "status": "error",
     "error": {"code": "bad_request", "message": "..."}}

Standard JSON has no NaN or infinity, so non-finite floats travel as ``{"$float": "nan"}``,
``{"$float": "inf"}`` or ``{"$float": "-inf"}``. Unknown fields are ignored, so later
minor additions stay compatible. This module is stdlib-only: both sides import it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

PROTOCOL_VERSION = 1

#: Request kinds; each ``<kind>_request`` is answered by ``<kind>_reply``.
REQUEST_KINDS = ("hello", "report", "goodbye", "status", "ping")
#: Kinds that address one training job and therefore need ``job_id`` and ``seq``.
JOB_KINDS = ("hello", "report", "goodbye")

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: The largest integer any message may carry (a 64-bit signed one): larger ones make the frame
#: malformed, so no step, seq or knob can be a number that overflows a float or a C integer.
MAX_INT = 2**63 - 1
#: Longest ``client_id`` and ``credential`` strings.
MAX_ID_CHARS = 64
MAX_CREDENTIAL_CHARS = 128

# Matched whole (re.fullmatch): "$" would also accept a trailing newline.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ErrorCode:
    """The error codes a reply may carry (stable strings, part of the protocol)."""

    MALFORMED = "malformed"  # not UTF-8 JSON, or not an object
    TOO_LARGE = "too_large"  # frame above the server's size limit
    VERSION = "unsupported_version"
    BAD_REQUEST = "bad_request"  # well-formed JSON, wrong fields or types
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_JOB = "unknown_job"  # report/goodbye for a job the server does not hold
    STALE_SEQ = "stale_seq"  # a sequence number older than the last one applied
    UNKNOWN_TUNER = "unknown_tuner"
    BAD_CONFIG = "bad_config"
    JOB_CONFLICT = "job_conflict"  # hello for a live job with another tuner or config
    JOB_FINISHED = "job_finished"
    TOO_MANY_SESSIONS = "too_many_sessions"  # hello for a new job while the server is at max_sessions
    UNAUTHENTICATED = "unauthenticated"  # unsigned, badly signed, stale or replayed (server with a secret)
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A request the server must refuse; carries the code sent back to the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- non-finite floats -----------------------------------------------------------------

_FLOAT_TAG = "$float"
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _tag_nonfinite(value: Any) -> Any:
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if math.isnan(value):
            return {_FLOAT_TAG: "nan"}
        return {_FLOAT_TAG: "inf" if value > 0 else "-inf"}
    if isinstance(value, dict):
        return {str(k): _tag_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tag_nonfinite(v) for v in value]
    return value


def _untag_nonfinite(obj: dict) -> Any:
    if len(obj) == 1 and _FLOAT_TAG in obj:
        tag = obj[_FLOAT_TAG]
        if not isinstance(tag, str) or tag not in _SPECIAL:
            raise ValueError(f"unknown {_FLOAT_TAG} value {tag!r}")
        return _SPECIAL[tag]
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f'bare {name} is not valid protocol JSON; use {{"{_FLOAT_TAG}": ...}}')


def dumps(obj: Any) -> bytes:
    """Encode a message; raises ValueError/TypeError for values JSON cannot carry."""
    try:  # most messages hold no NaN or infinity: the C encoder alone, no walk in Python
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError):  # a non-finite float, or a key JSON does not take: tag first
        text = json.dumps(_tag_nonfinite(obj), allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def _parse_int(text: str) -> int:
    # Checked on the digits first: converting a 4,000-digit number is itself slow.
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_INT:
        raise ValueError(
            f"integer {text[:24]}{'...' if len(text) > 24 else ''} is out of range (at most {MAX_INT} in magnitude)"
        )
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: standard JSON would give inf silently
        raise ValueError(
            f'number {text[:24]} is out of the float range; non-finite values travel as {{"{_FLOAT_TAG}": ...}}'
        )
    return value


def loads(frame: bytes) -> Any:
    """Decode a frame; raises ProtocolError(MALFORMED) for anything that is not valid v1 JSON,
    including integers beyond :data:`MAX_INT` and numbers beyond the float range."""
    try:
        text = frame.decode("utf-8")
        return json.loads(
            text,
            object_hook=_untag_nonfinite,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"frame is not valid protocol JSON: {exc}") from None


# --- envelopes -------------------------------------------------------------------------


def request(
    kind: str,
    body: dict | None = None,
    *,
    job_id: str | None = None,
    client_id: str | None = None,
    seq: int | None = None,
    credential: str | None = None,
) -> dict:
    """Build a request envelope (a dict; ``dumps`` it to send). ``credential``: the job's
    credential (job requests) or the server's admin token (``status``)."""
    if kind not in REQUEST_KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    msg: dict = {"v": PROTOCOL_VERSION, "type": f"{kind}_request", "body": body or {}}
    if job_id is not None:
        msg["job_id"] = job_id
    if client_id is not None:
        msg["client_id"] = client_id
    if seq is not None:
        msg["seq"] = seq
    if credential is not None:
        msg["credential"] = credential
    return msg


def ok_reply(req: dict, body: dict | None = None) -> dict:
    kind = req["type"][: -len("_request")]
    return _reply(f"{kind}_reply", req, status="ok", body=body or {})


def error_reply(req: dict | None, code: str, message: str) -> dict:
    """An error reply; ``req`` may be None or partial when the request could not be parsed."""
    req = req if isinstance(req, dict) else {}
    kind = req.get("type")
    name = (
        f"{kind[: -len('_request')]}_reply"
        if isinstance(kind, str) and kind.endswith("_request") and kind[: -len("_request")] in REQUEST_KINDS
        else "error_reply"
    )
    return _reply(name, req, status="error", error={"code": code, "message": message})


def _reply(name: str, req: dict, **fields: Any) -> dict:
    msg: dict = {"v": PROTOCOL_VERSION, "type": name}
    # Echo only well-formed identifiers: a bad request's junk is not sent back.
    if is_valid_job_id(req.get("job_id")):
        msg["job_id"] = req["job_id"]
    if type(req.get("seq")) is int and req["seq"] >= 0:
        msg["seq"] = req["seq"]
    msg.update(fields)
    return msg


def validate_request(msg: Any) -> tuple[str, dict]:
    """Check a decoded request envelope; return ``(kind, body)`` or raise ProtocolError."""
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "a message must be a JSON object")
    if type(msg.get("v")) is not int or msg["v"] != PROTOCOL_VERSION:  # True == 1 in Python
        raise ProtocolError(
            ErrorCode.VERSION, f"protocol version {msg.get('v')!r} not supported; this side speaks {PROTOCOL_VERSION}"
        )
    kind_field = msg.get("type")
    if not isinstance(kind_field, str) or not kind_field.endswith("_request"):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'type' must be '<kind>_request'")
    kind = kind_field[: -len("_request")]
    if kind not in REQUEST_KINDS:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {kind_field!r}")
    body = msg.get("body", {})
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'body' must be an object")
    credential = msg.get("credential")
    if credential is not None and (not isinstance(credential, str) or not 0 < len(credential) <= MAX_CREDENTIAL_CHARS):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"field 'credential' must be a string of 1-{MAX_CREDENTIAL_CHARS} characters"
        )
    if kind in JOB_KINDS:
        job_id = msg.get("job_id")
        if not is_valid_job_id(job_id):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "field 'job_id' must be 1-128 characters of letters, digits, '.', '_' or '-'"
            )
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'seq' must be a non-negative integer")
        client_id = msg.get("client_id")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_ID_CHARS:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"field 'client_id' must be a string of 1-{MAX_ID_CHARS} characters"
            )
    return kind, body


_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*|\*):([0-9]{1,5})")


def check_endpoint(endpoint: Any) -> str:
    """``endpoint`` if it is ``tcp://HOST:PORT`` (HOST a name, an IPv4 address or a bracketed
    IPv6 one; PORT 1-65535), else ValueError saying what is expected."""
    match = _ENDPOINT.fullmatch(endpoint) if isinstance(endpoint, str) else None
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(
            f"server address {endpoint!r} is not valid: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555"
        )
    return endpoint


def is_valid_job_id(job_id: Any) -> bool:
    """Whether ``job_id`` is 1-128 letters, digits, '.', '_' or '-', starting with a letter or
    digit (the whole string: no trailing newline)."""
    return isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None
