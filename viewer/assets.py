"""The pages' static files: read once at start, each served under a URL with its content's
hash (``/static/<digest>/<name>``) so a browser may keep it for a year and a new version
gets a new URL. mqtt.js comes from npm (viewer/package.json, installed by ``./dev up`` with
``npm ci``) and is served as ``vendor/mqtt.min.js``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

VIEWER_DIR = Path(__file__).resolve().parent
STATIC_DIR = VIEWER_DIR / "static"
TEMPLATES_DIR = VIEWER_DIR / "templates"
MQTT_JS = VIEWER_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
MQTT_JS_NAME = "vendor/mqtt.min.js"

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class StaticAsset:
    path: Path
    digest: str  # first 12 hex digits of the content's sha256: the URL changes with the file


def collect_assets(
    static_dir: Path = STATIC_DIR, mqtt_js: Path = MQTT_JS
) -> dict[str, StaticAsset]:
    """Every file the pages may load, by its name under /static/<digest>/. Read once at start."""
    assets: dict[str, StaticAsset] = {}
    files = [(p.relative_to(static_dir).as_posix(), p) for p in sorted(static_dir.rglob("*"))]
    if mqtt_js.is_file():
        files.append((MQTT_JS_NAME, mqtt_js))
    for name, path in files:
        if path.is_file() and path.suffix in CONTENT_TYPES:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            assets[name] = StaticAsset(path, digest)
    return assets


def static_url(assets: dict[str, StaticAsset], name: str) -> str:
    """``/static/<digest>/<name>``; KeyError for a file that is not there."""
    return f"/static/{assets[name].digest}/{name}"


def static_response(assets: dict[str, StaticAsset], request: Request) -> Response:
    """The answer to ``/static/{digest}/{name:path}``: the file, cached for a year when the
    digest is its current one; 404 for a name that is not an asset."""
    asset = assets.get(request.path_params["name"])
    if asset is None:
        raise HTTPException(404)
    # An old digest still gets today's file, but must not be cached as if it were that one.
    fresh = request.path_params["digest"] == asset.digest
    return FileResponse(
        asset.path,
        media_type=CONTENT_TYPES[asset.path.suffix],
        headers={"Cache-Control": IMMUTABLE if fresh else "no-cache"},
    )
