"""The web UI: a placeholder page until the React app is built and served from here."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>orderly</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}</style></head>
<body><h1>orderly</h1>
<p>The order API is running. The web app will be served here.</p>
<ul><li><a href="/docs">API documentation (Swagger UI)</a></li>
<li><a href="/openapi.json">OpenAPI document</a></li>
<li><a href="/api/products">Product catalogue</a></li>
<li><a href="/health/ready">Readiness</a></li></ul>
<p>Get a token with <code>orderly token alice</code>.</p></body></html>
"""


@router.get("/", response_class=HTMLResponse)
async def index() -> str:
    return PLACEHOLDER
