"""HTTP routes for contacts: read one, set fields by hand, CSV export and import.

| route | roles |
|---|---|
| ``GET /api/contacts/{phone}`` | agent (read-only), manager, admin |
| ``PUT /api/contacts/{phone}`` | manager, admin; JSON object of the fields to set |
| ``GET /api/contacts.csv`` | manager, admin |
| ``POST /api/contacts/import`` | admin; ``text/csv`` body up to 5 MB |

``{phone}`` is any spelling of the number (``+79161110001``, ``89161110001``).
Bad input answers 400 with ``{"error": "bad_field", "field": ..., "message": ...}``.
Needs ``app[CONTACTS]``; the session middleware and ``gateway.web``'s keys
(``DIRECTORY``, ``SIGNER``) come from ``gateway.web.build_app``.
"""

from __future__ import annotations

import codecs
import json
import logging

from aiohttp import web

from crm_bridge.contacts import ContactError, Contacts, FieldError
from crm_bridge.store import StoreError
from gateway.users import Role
from gateway.web import _json_body, _json_error, _require, store_unavailable

log = logging.getLogger(__name__)

CONTACTS = web.AppKey("contacts", Contacts)
MAX_IMPORT_BYTES = 5 * 1024 * 1024
_READ_CHUNK = 64 * 1024


def add_routes(app: web.Application) -> None:
    # The plain paths first: /api/contacts/import must not be taken for a phone.
    app.router.add_get("/api/contacts.csv", export_contacts)
    app.router.add_post("/api/contacts/import", import_contacts)
    app.router.add_get("/api/contacts/{phone}", get_contact)
    app.router.add_put("/api/contacts/{phone}", put_contact)


def _field_error(exc: FieldError) -> web.HTTPException:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "bad_field", "field": exc.field, "message": str(exc)}, ensure_ascii=False),
        content_type="application/json",
    )


async def get_contact(request: web.Request) -> web.StreamResponse:
    _require(request, [Role.AGENT, Role.MANAGER, Role.ADMIN])
    try:
        contact = await request.app[CONTACTS].get(request.match_info["phone"])
    except FieldError as exc:
        raise _field_error(exc) from None
    except StoreError as exc:
        raise store_unavailable("read", exc) from None
    if contact is None:
        raise _json_error(web.HTTPNotFound, "no_such_contact", "no contact with this phone")
    return web.json_response({"contact": contact.to_json()})


async def put_contact(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.MANAGER, Role.ADMIN])
    body = await _json_body(request)
    try:
        contact = await request.app[CONTACTS].put(request.match_info["phone"], body, set_by=user.login)
    except FieldError as exc:
        raise _field_error(exc) from None
    except StoreError as exc:
        raise store_unavailable("put", exc) from None
    log.info("contact %s changed by %s: %s", contact.contact_id, user.login, ", ".join(sorted(body)))
    return web.json_response({"contact": contact.to_json()})


async def export_contacts(request: web.Request) -> web.StreamResponse:
    _require(request, [Role.MANAGER, Role.ADMIN])
    try:
        text = await request.app[CONTACTS].export_csv()
    except StoreError as exc:
        raise store_unavailable("export", exc) from None
    # The byte order mark makes spreadsheets read the file as UTF-8 (Cyrillic names).
    return web.Response(
        body=("\ufeff" + text).encode("utf-8"),
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="contacts.csv"',
            "Cache-Control": "no-store",
        },
    )


async def import_contacts(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.ADMIN])
    if request.content_type != "text/csv":
        # Also a CSRF guard: a cross-site form cannot send text/csv.
        raise _json_error(web.HTTPUnsupportedMediaType, "csv_required", "send text/csv")
    charset = request.charset or "utf-8"
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        raise _json_error(web.HTTPBadRequest, "bad_charset", f"unknown charset {charset[:40]!r}") from None
    if request.content_length is not None and request.content_length > MAX_IMPORT_BYTES:
        raise _too_large()
    # Read by hand: the app's client_max_size is far below an import's limit,
    # and a body without Content-Length is cut off here at the limit too.
    body = bytearray()
    while chunk := await request.content.read(_READ_CHUNK):
        body += chunk
        if len(body) > MAX_IMPORT_BYTES:
            raise _too_large()
    try:
        text = bytes(body).decode("utf-8-sig" if codec.name == "utf-8" else codec.name)
    except UnicodeDecodeError as exc:
        raise _json_error(web.HTTPBadRequest, "bad_encoding",
                          f"the body is not valid {codec.name} (byte {exc.start}); save the file as CSV UTF-8"
                          ) from None
    try:
        report = await request.app[CONTACTS].import_csv(text, set_by=user.login)
    except ContactError as exc:
        raise _json_error(web.HTTPBadRequest, "bad_csv", str(exc)) from None
    except StoreError as exc:
        raise store_unavailable("import", exc) from None
    return web.json_response({"report": report.to_json()})


def _too_large() -> web.HTTPException:
    return web.HTTPRequestEntityTooLarge(
        max_size=MAX_IMPORT_BYTES,
        actual_size=0,
        text=json.dumps({"error": "too_large", "message": f"an import is at most {MAX_IMPORT_BYTES} bytes"}),
        content_type="application/json",
    )
