"""The web page: `index.html` at `/` for browsers, its scripts and styles under `/ui/`.

The files in `web/` are plain HTML, CSS and JavaScript modules: no build step, nothing fetched
from elsewhere (the Content-Security-Policy says so to the browser, too). They are read once and
served from memory. The page and its assets need no key, like `/health`; everything it shows
beyond `/health` comes from endpoints that do (`/v1/pensieve/history`, `/v1/messages`), with the
key the user types into the page, kept in the tab's sessionStorage.

Each asset is its own route (not a static directory), so the routes match the OpenAPI document
one for one, and no path a client sends ever reaches the file system.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from pensieve.server.keys import SETTINGS

ASSET_PREFIX = "/ui/"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
"""Written out rather than taken from `mimetypes`, whose answers vary with the OS's own tables."""

_WEB = resources.files("pensieve.server") / "web"
ASSETS: dict[str, str] = {
    f"{ASSET_PREFIX}{f.name}": CONTENT_TYPES[f.name[f.name.rindex("."):]]
    for f in sorted(_WEB.iterdir(), key=lambda f: f.name)
    if "." in f.name and f.name[f.name.rindex("."):] in CONTENT_TYPES
}
"""URL path -> content type of every asset the page loads."""

POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Same origin only: the page can load nothing from the network, nor be framed by another site."""
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return (_WEB / name).read_bytes()


def wants_page(request: web.Request) -> bool:
    """A browser navigating to `/` (it asks for text/html) gets the page; API clients keep JSON."""
    if not request.app[SETTINGS].server.web_ui:
        return False
    for item in request.headers.get("Accept", "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() == "text/html" and "q=0" not in params:
            return True
    return False


def page() -> web.Response:
    return web.Response(body=_read("index.html"), content_type="text/html", charset="utf-8", headers={**HEADERS, "Vary": "Accept"})


def _asset_handler(name: str, content_type: str) -> web.RouteDef:
    async def asset(request: web.Request) -> web.Response:
        return web.Response(body=_read(name), content_type=content_type, charset="utf-8", headers=HEADERS)

    return web.get(f"{ASSET_PREFIX}{name}", asset)


routes = [_asset_handler(path.removeprefix(ASSET_PREFIX), content_type) for path, content_type in ASSETS.items()]
"""One GET route per asset; added to the app only when `server.web_ui` is on."""
