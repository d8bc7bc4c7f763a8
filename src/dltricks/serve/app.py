"""The web app of ``dltricks serve``: a FastAPI application, one HTML page, and a server thread for tests.

Routes (all JSON except the page and the plots):

====================================  ====================================================================
``GET /``                             the page (``page.html``): Runs, Evidence and Playground tabs
``GET /api/runs``                     the runs below ``--runs`` (:func:`dltricks.serve.runs.find_runs`)
``GET /api/runs/{name}``              one run's epoch records and recipe
``GET /api/diff?a=NAME&b=NAME``       the recipe keys whose values differ between two runs
``GET /api/evidence``                 the tips of ``--evidence/results.json`` with verdicts and plot URLs
``GET /evidence/{path}``              a PNG plot of the evidence report
``POST /api/classify?run=NAME``       body: an image; top-5 classes (``&canvas=1``: a drawn digit, framed
                                      as MNIST is)
``POST /api/segment?run=NAME``        body: an image; the mask overlaid, as a PNG data URL
``POST /api/translate?run=NAME``      body: ``{"text": "..."}``; the ISO date and its attention
====================================  ====================================================================

Safety: the request body is read in chunks and refused past ``Limits.max_bytes`` (before the whole upload is
in memory); images go through :func:`dltricks.serve.predict.decode_image`; run names through
:func:`~dltricks.serve.runs.resolve_run`; bound to a loopback address, requests naming another ``Host``
are refused (DNS rebinding). One forward pass runs at a time: torch already spreads one over every core.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from dltricks.errors import DltricksError
from dltricks.serve.predict import (Limits, ModelCache, UploadError, canvas_to_mnist, classify_image, decode_image,
                                    segment_image, translate_date)
from dltricks.serve.runs import (ForbiddenPath, NotFound, find_runs, read_history, recipe_diff, resolve_run,
                                 run_recipe)

__all__ = ["create_app", "ServerThread", "free_port", "LOOPBACK"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; connect-src 'self'",
}


def _status_of(err: DltricksError) -> int:
    if isinstance(err, UploadError):
        return err.status
    if isinstance(err, ForbiddenPath):
        return 403
    return 404 if isinstance(err, NotFound) else 400


def _evidence(folder: Path | None) -> dict[str, Any]:
    """The tips of an evidence report, for the Evidence tab."""
    from dltricks.tips.engine import TipResult
    from dltricks.tips.report import VERDICT_ORDER, key_numbers

    path = folder / "results.json" if folder is not None else None
    if path is None or not path.is_file():
        return {"tips": [], "sections": [], "verdicts": [], "meta": {},
                "missing": f"no evidence report at {path} (write one with `dltricks verify --out DIR`)"}
    data = json.loads(path.read_text())
    tips = []
    for row in data.get("tips", []):
        result = TipResult.from_dict(row)
        tips.append({"id": result.id, "title": result.title, "section": result.section, "verdict": result.verdict,
                     "claim": result.claim, "reason": result.reason, "key_numbers": key_numbers(result, plain=True),
                     "plots": [f"/evidence/{PurePosixPath(p).as_posix()}" for p in result.plots]})
    verdicts = sorted({t["verdict"] for t in tips},
                      key=lambda v: VERDICT_ORDER.index(v) if v in VERDICT_ORDER else len(VERDICT_ORDER))
    return {"tips": tips, "sections": sorted({t["section"] for t in tips}), "verdicts": verdicts,
            "meta": data.get("meta", {})}


def _evidence_file(folder: Path | None, name: str) -> Path:
    """A PNG inside the evidence folder (nothing else, nothing outside it)."""
    pure = PurePosixPath(name)
    if folder is None or pure.is_absolute() or ".." in pure.parts or "\\" in name or pure.suffix.lower() != ".png":
        raise ForbiddenPath(f"{name!r}: only the report's PNG plots can be read")
    root = folder.resolve()
    path = (root / pure).resolve()
    if not path.is_relative_to(root):
        raise ForbiddenPath(f"{name!r}: only the report's PNG plots can be read")
    if not path.is_file():
        raise NotFound(f"{name!r}: no such plot")
    return path


class Playground:
    """What the routes do, without the web framework: the runs, the report and the models of one server."""

    def __init__(self, runs_dir: str | Path, evidence_dir: str | Path | None, limits: Limits) -> None:
        self.runs_root = Path(runs_dir)
        self.evidence = Path(evidence_dir) if evidence_dir is not None else None
        self.limits = limits
        self.models = ModelCache()
        self.forward_lock = threading.Lock()

    def runs(self) -> dict[str, Any]:
        return {"root": str(self.runs_root), "runs": [info.to_dict() for info in find_runs(self.runs_root)]}

    def run_detail(self, name: str) -> dict[str, Any]:
        path = resolve_run(self.runs_root, name)
        return {"name": name, "history": read_history(path), "recipe": run_recipe(path)}

    def diff(self, a: str, b: str) -> dict[str, Any]:
        recipes = [run_recipe(resolve_run(self.runs_root, name)) for name in (a, b)]
        return {"a": a, "b": b, "diff": recipe_diff(*recipes)}

    def classify(self, data: bytes, run: str, canvas: bool) -> dict[str, Any]:
        loaded = self.models.get(resolve_run(self.runs_root, run))
        image = decode_image(data, self.limits)
        if canvas:
            image = canvas_to_mnist(image, size=loaded.input_shape[-1] if loaded.input_shape else 28)
        start = time.perf_counter()
        with self.forward_lock:
            top = classify_image(loaded, image)
        return {"run": run, "model": loaded.name, "top": top, "ms": 1000 * (time.perf_counter() - start)}

    def segment(self, data: bytes, run: str) -> dict[str, Any]:
        loaded = self.models.get(resolve_run(self.runs_root, run))
        image = decode_image(data, self.limits)
        with self.forward_lock:
            overlay, fraction = segment_image(loaded, image)
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        return {"run": run, "model": loaded.name, "foreground": fraction, "width": overlay.width,
                "height": overlay.height, "overlay": url}

    def translate(self, data: bytes, run: str) -> dict[str, Any]:
        try:
            text = json.loads(data or b"{}").get("text")
        except (ValueError, AttributeError) as err:
            raise UploadError('expected a JSON body {"text": "..."}') from err
        if not isinstance(text, str):
            raise UploadError('expected a JSON body {"text": "..."}')
        loaded = self.models.get(resolve_run(self.runs_root, run))
        with self.forward_lock:
            result = translate_date(loaded, text, self.limits)
        return {"run": run, "model": loaded.name, **result}


def create_app(runs_dir: str | Path, *, evidence_dir: str | Path | None = None, limits: Limits = Limits(),
               trusted_hosts: tuple[str, ...] | None = LOOPBACK) -> Any:
    """The FastAPI application over the runs below ``runs_dir`` and the report in ``evidence_dir``.

    ``trusted_hosts``: the ``Host`` headers accepted (``None``: any, for a server bound to a public address).
    """
    service = Playground(runs_dir, evidence_dir, limits)
    page = resources.files("dltricks.serve").joinpath("page.html").read_text()
    app = FastAPI(title="dltricks serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.playground = service

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Any:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if trusted_hosts is not None and host not in trusted_hosts:
            return JSONResponse({"error": f"host {host!r} refused; this server answers on {trusted_hosts[0]}"},
                                status_code=400)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_bytes:
            return JSONResponse({"error": f"upload of {int(length):,} bytes is over the limit of "
                                          f"{limits.max_bytes:,} bytes"}, status_code=413)
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.exception_handler(DltricksError)
    async def refused(request: Request, err: DltricksError) -> Any:
        return JSONResponse({"error": str(err)}, status_code=_status_of(err))

    async def body(request: Request) -> bytes:
        """The request body, refused as soon as it grows past the limit (chunked uploads included)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise UploadError(f"upload over the limit of {limits.max_bytes:,} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    app.get("/", response_class=HTMLResponse)(lambda: page)
    app.get("/api/runs")(service.runs)
    app.get("/api/runs/{name:path}")(service.run_detail)
    app.get("/api/diff")(service.diff)
    app.get("/api/evidence")(lambda: _evidence(service.evidence))
    app.get("/evidence/{name:path}")(
        lambda name: FileResponse(_evidence_file(service.evidence, name), media_type="image/png"))

    # Model work runs in the thread pool, so the event loop keeps answering while a forward pass runs.
    @app.post("/api/classify")
    async def classify(request: Request, run: str, canvas: bool = False) -> dict[str, Any]:
        return await run_in_threadpool(service.classify, await body(request), run, canvas)

    @app.post("/api/segment")
    async def segment(request: Request, run: str) -> dict[str, Any]:
        return await run_in_threadpool(service.segment, await body(request), run)

    @app.post("/api/translate")
    async def translate(request: Request, run: str) -> dict[str, Any]:
        return await run_in_threadpool(service.translate, await body(request), run)

    return app


# --------------------------------------------------------------------------------------------------
# Running it


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerThread:
    """The app served by uvicorn in a background thread: ``with ServerThread(app) as server: server.url``."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        # timeout_graceful_shutdown: open connections and tasks get 5 s after Ctrl-C, not forever (uvicorn's default).
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dltricks-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
