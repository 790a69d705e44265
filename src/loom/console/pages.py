"""The console's pages: `/` redirects to `/console/`, every `/console/…` path is the one-page app, and
`/console/static/…` its assets (shipped in the package, no build step). None of it holds data: the data comes
from `/v1` and `/console/api` with the user's key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Scripts and styles only from here; images also as blobs (files fetched with the key) and from the web
# (`image_url` message parts); nothing may frame the console.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: https:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file() and path.suffix in _TYPES:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            assets[path.relative_to(STATIC).as_posix()] = Asset(body, _TYPES[path.suffix], etag)
    return assets


ASSETS = _load()
router = APIRouter(include_in_schema=False)


def _send(request: Request, asset: Asset) -> Response:
    headers = {
        "etag": asset.etag,
        "cache-control": "no-cache",
        "x-content-type-options": "nosniff",
        "content-security-policy": CSP,
        "referrer-policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=307)


@router.get("/console/static/{name:path}")
async def static(request: Request, name: str) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise HTTPException(404)
    return _send(request, asset)


@router.get("/console")
@router.get("/console/{page:path}")
async def app_page(request: Request, page: str = "") -> Response:
    if page == "api" or page.startswith("api/"):
        raise HTTPException(404)  # an unknown console API path answers JSON, like an unknown /v1 path
    return _send(request, ASSETS["index.html"])
