"""The HTTP ranking service: FastAPI over :class:`agents.serving.ServingRuntime`, run by uvicorn.

``python -m agents.serve RUN_DIR [--redis URL] [--port 8000]`` (or ``python -m agents.serving``): ``POST
/recommend``, ``POST /feedback``, ``DELETE /users/{id}``, ``GET /health``, ``GET /metrics``; errors
``{"error": code, "detail": ...}``.
docs/serving.md has the endpoints, every error status, the limits and the trust model.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.serving.errors import (
    CorruptStateError,
    ExplanationUnavailableError,
    InvalidRequestError,
    StoreConflictError,
    UnknownArmError,
    UnknownItemsError,
)
from agents.serving.items import register_items
from agents.serving.messages import Event
from agents.serving.privacy import LOG_KEY_ENV, install_access_log_filter
from agents.serving.runtime import ServingRuntime

MAX_ID_LEN = 256
MAX_EVENTS = 1000
DEFAULT_MAX_BODY_BYTES = 256 * 1024
#: Idle time after which a user's state is forgotten, in both stores (30 days; ``--state-ttl-s``).
DEFAULT_STATE_TTL_S = 30 * 86400
ENDPOINTS = ("/recommend", "/feedback", "/health", "/metrics", "/users/{id}", "/items")
USERS_PREFIX = "/users/"
OPEN_PATHS = frozenset({"/health"})
#: The status ``recfeed_http_requests_total`` records for a client that disconnected before its body arrived
#: (nginx's "client closed request"; no response was sent).
DISCONNECT_STATUS = 499
API_KEY_ENV = "RECFEED_API_KEY"
CONFIG_ENV = "RECFEED_SERVE_CONFIG"

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN)]


class RecommendBody(BaseModel):
    """``POST /recommend``."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id
    candidate_ids: Annotated[list[Id], Field(min_length=1)]
    k: Annotated[int | None, Field(ge=1)] = None
    record: bool = True
    explain: StrictBool = False  # JSON true / false only (not 1, "yes")
    arm: Id | None = None  # A/B: serve this arm instead of the assigned one (services started with --arms)


class EventBody(BaseModel):
    """One feedback event."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["click", "purchase", "dwell"]
    item_id: Id
    dwell_s: Annotated[float, Field(ge=0.0, le=86_400.0, allow_inf_nan=False)] = 0.0
    request_id: Annotated[int | None, Field(ge=0)] = None


class FeedbackBody(BaseModel):
    """``POST /feedback``."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id
    events: Annotated[list[EventBody], Field(min_length=1, max_length=MAX_EVENTS)]


def _json(status: int, data: Any) -> Response:
    return Response(json.dumps(data, separators=(",", ":")).encode(), status_code=status,
                    media_type="application/json")


def _error(status: int, code: str, detail: Any) -> Response:
    return _json(status, {"error": code, "detail": detail})


def _validation_error(raw: Any, prefix: list[str] | None = None) -> Response:
    """400 for a body that is not JSON (or missing), else 422 listing what breaks the schema."""
    errors = [{"loc": [*(prefix or []), *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in raw]
    if any(e["type"] == "json_invalid" or (e["type"] == "missing" and e["loc"] == ["body"]) for e in errors):
        return _error(400, "malformed_json", "the body must be a JSON object: " + "; ".join(e["msg"] for e in errors))
    return _error(422, "invalid_request", errors)


def _known_errors() -> tuple[type[Exception], ...]:
    """The runtime's expected failures, each with its HTTP answer (:func:`_error_response`)."""
    import redis

    return (UnknownItemsError, InvalidRequestError, CorruptStateError, StoreConflictError, redis.RedisError)


def _error_response(exc: Exception) -> Response:
    """The HTTP answer to one of :func:`_known_errors`."""
    if isinstance(exc, UnknownItemsError):
        return _error(404, "unknown_items", {"unknown": exc.unknown[:50], "count": len(exc.unknown)})
    if isinstance(exc, ExplanationUnavailableError):
        return _error(409, "explain_unavailable", str(exc))
    if isinstance(exc, UnknownArmError):
        return _error(422, "unknown_arm", str(exc))
    if isinstance(exc, InvalidRequestError):
        return _error(422, "invalid_request", str(exc))
    if isinstance(exc, CorruptStateError):
        return _error(500, "corrupt_user_state", str(exc))
    if isinstance(exc, StoreConflictError):
        return _error(503, "store_busy", str(exc))
    return _error(503, "store_unavailable", f"{type(exc).__name__}: {exc}")


class _Guard:
    """Pure ASGI middleware: request metrics, the API key, the body size limit (checked on the bytes read,
    whatever Content-Length claims), and the two hot endpoints.

    ``POST /recommend`` and ``POST /feedback`` are answered here, from the body this middleware has already read,
    by the same handlers the app's routes use: that skips Starlette's middleware stack, routing and request
    objects (about a fifth of the per-request CPU). Everything else goes to the FastAPI app.
    """

    def __init__(self, app: Any, runtime: ServingRuntime, api_key: str | None, max_body_bytes: int,
                 hot: dict[str, Any] | None = None) -> None:
        from prometheus_client import Counter, Histogram

        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes
        self.hot = hot or {}
        reg = runtime.metrics.registry
        self.requests = Counter("recfeed_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=reg)
        self.seconds = Histogram("recfeed_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0),
                                 registry=reg)
        self._counters: dict[tuple[str, int], Any] = {}
        self._timers = {e: self.seconds.labels(e) for e in (*ENDPOINTS, "other")}

    async def _respond(self, send: Any, resp: Response) -> None:
        await send({"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    def _authorised(self, scope: dict[str, Any]) -> bool:
        assert self.api_key is not None
        key = self.api_key.encode()
        ok = False
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                ok |= hmac.compare_digest(value, key)
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                ok |= hmac.compare_digest(value[7:].strip(), key)
        return ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope["path"]
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key is not None and path not in OPEN_PATHS and not self._authorised(scope):
                await self._respond(send_status, _error(401, "unauthorized", "missing or wrong API key"))
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                ctype = b""
                for name, value in scope["headers"]:
                    if name == b"content-type":
                        ctype = value.split(b";")[0].strip().lower()
                if ctype != b"application/json" and not ctype.endswith(b"+json"):
                    await self._respond(send_status, _error(415, "unsupported_media_type",
                                                            "send the body as Content-Type: application/json"))
                    return
                too_big = _error(413, "body_too_large", f"request body is over the limit of {self.max_body} bytes")
                for name, value in scope["headers"]:
                    if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                        await self._respond(send_status, too_big)
                        return
                chunks, size = [], 0
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        status[0] = DISCONNECT_STATUS
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await self._respond(send_status, too_big)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
                body = b"".join(chunks)
                handler = self.hot.get(path) if scope["method"] == "POST" else None
                if handler is not None:
                    await self._respond(send_status, await handler(body))
                    return
                replayed = False

                async def replay() -> dict[str, Any]:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            endpoint = path if path in ENDPOINTS else "/users/{id}" if path.startswith(USERS_PREFIX) else "other"
            key = (endpoint, status[0])
            counter = self._counters.get(key)
            if counter is None:  # a handful of (endpoint, status) pairs: cached children, no labels() per request
                counter = self._counters[key] = self.requests.labels(endpoint, str(status[0]))
            counter.inc()
            self._timers[endpoint].observe(time.perf_counter() - t0)


def create_app(runtime: ServingRuntime, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               threadpool: bool = False) -> FastAPI:
    """The FastAPI app over ``runtime``.

    Args:
        runtime: The runtime.
        api_key: Required key (``None``: no authentication; see docs/serving.md).
        max_body_bytes: Largest request body (413 above).
        threadpool: Run the runtime in the threadpool instead of on the event loop. Off by default: a request is
            CPU-bound (under a millisecond; a Redis round trip on loopback is ~0.1 ms), and thread hand-offs under
            the GIL cost more than they overlap; scale with ``--workers`` (Redis store) instead.

    Returns:
        The app.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if api_key is not None and not api_key:
        raise ValueError("api_key must be None or non-empty")
    if not (isinstance(max_body_bytes, int) and max_body_bytes >= 1):
        raise ValueError(f"max_body_bytes must be an integer >= 1, got {max_body_bytes!r}")
    offload = bool(threadpool)
    app = FastAPI(title="recfeed ranking service", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime

    async def call(fn: Any, *args: Any) -> Any:
        return await run_in_threadpool(fn, *args) if offload else fn(*args)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return _validation_error(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths (404) and wrong methods (405, with ``Allow``) in the documented error shape."""
        path = request.url.path
        if exc.status_code == 404:
            resp = _error(404, "not_found", f"no endpoint {path}; the endpoints are {', '.join(ENDPOINTS)}")
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            resp = _error(405, "method_not_allowed", f"{request.method} is not allowed on {path} (allowed: "
                          f"{allowed})")
        else:
            resp = _error(exc.status_code, "http_error", str(exc.detail))
        for name, value in (exc.headers or {}).items():
            resp.headers[name] = value
        return resp

    known = _known_errors()
    for exc_type in known:
        app.add_exception_handler(exc_type, lambda _, exc: _error_response(exc))  # type: ignore[misc]

    # The two hot endpoints parse and validate the body in one step (pydantic's JSON validator) instead of through
    # FastAPI's dependency machinery: the same schema and the same errors, a fraction of the per-request cost.
    async def handle_recommend(raw: bytes) -> Response:
        try:
            body = RecommendBody.model_validate_json(raw)
            rec = await call(runtime.recommend, body.user_id, body.candidate_ids, body.k, body.record, body.explain,
                             body.arm)
        except ValidationError as exc:
            return _validation_error(exc.errors(include_url=False, include_input=False), prefix=["body"])
        except known as exc:
            return _error_response(exc)
        return _json(200, rec.to_dict())

    async def handle_feedback(raw: bytes) -> Response:
        try:
            body = FeedbackBody.model_validate_json(raw)
            events = [Event(e.type, e.item_id, e.dwell_s, e.request_id) for e in body.events]
            n = await call(runtime.observe, body.user_id, events)
        except ValidationError as exc:
            return _validation_error(exc.errors(include_url=False, include_input=False), prefix=["body"])
        except known as exc:
            return _error_response(exc)
        return _json(200, {"applied": n})

    async def recommend(request: Request) -> Response:
        return await handle_recommend(await request.body())

    async def feedback(request: Request) -> Response:
        return await handle_feedback(await request.body())

    # Routes (wrong methods get 405); the middleware answers POSTs to them directly.
    app.router.add_route("/recommend", recommend, methods=["POST"])
    app.router.add_route("/feedback", feedback, methods=["POST"])

    async def forget(request: Request) -> Response:
        """``DELETE /users/{id}``: erase the user's state (204), or 404 ``unknown_user``."""
        user_id = request.path_params["user_id"]
        if not 1 <= len(user_id) <= MAX_ID_LEN:
            return _error(422, "invalid_request", f"the user id must have 1 to {MAX_ID_LEN} characters")
        try:
            erased = await call(runtime.forget_user, user_id)
        except known as exc:
            return _error_response(exc)
        if not erased:
            return _error(404, "unknown_user", "no state is held for this user (never seen, erased, or expired)")
        return Response(status_code=204)

    app.router.add_route(USERS_PREFIX + "{user_id:path}", forget, methods=["DELETE"])
    install_access_log_filter(runtime.hash_user_id)  # uvicorn's access log writes the path: only the pseudonym

    @app.get("/health")
    async def health() -> Response:
        h = await call(runtime.health)
        return _json(200 if h["store_ok"] else 503, h)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    register_items(app, runtime, call, _validation_error)  # POST /items: new items (agents/serving/items.py)

    async def flush_logs() -> None:  # the A/B log's buffered rows reach the disk on shutdown
        writer = getattr(runtime, "writer", None)
        if writer is not None:
            await run_in_threadpool(writer.close)

    app.router.add_event_handler("shutdown", flush_logs)
    app.add_middleware(_Guard, runtime=runtime, api_key=api_key, max_body_bytes=max_body_bytes,
                       hot={"/recommend": handle_recommend, "/feedback": handle_feedback})
    return app


# ---- CLI --------------------------------------------------------------------------------------------------------


def resolve_artifact(path: str | Path, fmt: str = "onnx") -> Path:
    """The artifact directory for ``path``: itself if it holds a manifest, else ``path/export`` (exported now,
    as ``fmt``, when missing)."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return p
    if (p / "export" / "manifest.json").is_file():
        return p / "export"
    if not (p / "model.zip").is_file():
        raise FileNotFoundError(f"{p} is neither a run directory (model.zip) nor an exported policy (manifest.json)")
    from agents.export import export_run

    print(f"no export in {p}: exporting the policy as {fmt} to {p / 'export'} ...", flush=True)
    return export_run(p, fmt, progress=True)  # type: ignore[arg-type]


def _secret(path: str | None, env_var: str) -> str | None:
    """A key from a file (``--api-key-file`` / ``--log-key-file``), else from ``env_var``, else None.

    Raises:
        ValueError: The file is empty.
    """
    if path:
        key = Path(path).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"{path} is empty")
        return key
    return os.environ.get(env_var) or None


def _build(conf: dict[str, Any]) -> FastAPI:
    cls = ServingRuntime
    if conf.get("arms"):
        from agents.serving.arms import ABRuntime

        cls = ABRuntime
    runtime = cls.load(conf["artifact"], conf["redis"], time_budget_ms=conf["time_budget_ms"],
                                  session_timeout_s=conf["session_timeout_s"], max_candidates=conf["max_candidates"],
                                  cf_fold_in=conf["cf_fold_in"], threads=conf.get("model_threads", 1),
                                  **_ttl_kwargs(conf.get("state_ttl_s", DEFAULT_STATE_TTL_S)),
                                  log_key=conf.get("log_key"))
    if conf.get("arms"):
        from agents.serving.arms import load_arms_file

        runtime.set_arms(load_arms_file(conf["arms"]), log_dir=conf.get("ab_log_dir"),  # type: ignore[attr-defined]
                         threads=conf.get("model_threads", 1))
    return create_app(runtime, api_key=conf["api_key"], max_body_bytes=conf["max_body_bytes"])


def _ttl_kwargs(ttl_s: int) -> dict[str, Any]:
    """``--state-ttl-s`` (0: never) as the runtime's two expiries: the in-process store's and Redis's."""
    return {"state_ttl_s": ttl_s or None, "redis_ttl_s": ttl_s or None}


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers (``--workers``): the settings come in ``RECFEED_SERVE_CONFIG``."""
    conf = json.loads(os.environ[CONFIG_ENV])
    conf["api_key"] = os.environ.get(API_KEY_ENV) or conf.get("api_key")
    return _build(conf)


def is_loopback(host: str) -> bool:
    """``host`` is ``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _int_arg(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is not >= {lo}" if hi is None
                                             else f"{value} is not in [{lo}, {hi}]")
        return value

    return parse


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: every limit is checked here (a bad value exits with status 2 naming the flag)."""
    ap = argparse.ArgumentParser(prog="python -m agents.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="run directory (RUN_DIR/export is used, exported first if missing) or an "
                    "exported artifact directory")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only; another address "
                    "needs an API key or --insecure)")
    ap.add_argument("--port", type=_int_arg(1, 65535), default=8000, help="TCP port, 1-65535")
    ap.add_argument("--insecure", action="store_true",
                    help="allow a non-loopback --host without an API key (anyone who reaches the port can read "
                    "and write every user's state)")
    ap.add_argument("--redis", default=None, help="redis:// URL of the user-state store (default: in-process)")
    ap.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="format when exporting")
    ap.add_argument("--time-budget-ms", type=_positive_float, default=10.0,
                    help="model deadline; the fallback answers after")
    ap.add_argument("--session-timeout-s", type=_positive_float, default=1800.0,
                    help="idle time that ends a session")
    ap.add_argument("--max-candidates", type=_int_arg(1), default=1000, help="largest candidate list per request")
    ap.add_argument("--max-body-bytes", type=_int_arg(1), default=DEFAULT_MAX_BODY_BYTES,
                    help="largest request body")
    ap.add_argument("--model-threads", type=_int_arg(1), default=1,
                    help="model intra-op threads (ONNX Runtime; TorchScript: torch.set_num_threads, process-wide)")
    ap.add_argument("--no-cf-fold-in", action="store_true", help="keep CF factors fixed (imported or zero)")
    ap.add_argument("--api-key-file", default=None,
                    help=f"file holding the API key (else ${API_KEY_ENV}; neither: no authentication)")
    ap.add_argument("--state-ttl-s", type=_int_arg(0), default=DEFAULT_STATE_TTL_S,
                    help="idle seconds after which a user's state is forgotten, in memory and in Redis (default 30 "
                    "days; 0: never)")
    ap.add_argument("--log-key-file", default=None,
                    help=f"file holding the key of the user-id hash in logs (else ${LOG_KEY_ENV}; neither: a random "
                    "key per process)")
    ap.add_argument("--arms", default=None, help="A/B arms file (YAML/JSON: name, kind or export, share, temperature; "
                    "docs/serving.md 'A/B arms'); needs a log key (assignment hashes the user id with it)")
    ap.add_argument("--ab-log-dir", default=None, help="with --arms: folder of the Parquet serving log (requests with "
                    "propensities under every arm, and feedback); default: no log")
    ap.add_argument("--workers", type=_int_arg(1), default=1, help="uvicorn worker processes (needs --redis)")
    ap.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug",
                                                                "trace"])
    ap.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    args = build_parser().parse_args(argv)
    import uvicorn

    if args.workers > 1 and not args.redis:
        print("--workers > 1 needs --redis: in-process user state is not shared between processes",
              file=sys.stderr)
        return 2
    try:
        api_key = _secret(args.api_key_file, API_KEY_ENV)
        log_key = _secret(args.log_key_file, LOG_KEY_ENV)
        if api_key is None and not is_loopback(args.host) and not args.insecure:
            raise ValueError(f"--host {args.host} is not a loopback address and no API key is set: anyone who "
                             f"reaches the port could read and write every user's state. Set ${API_KEY_ENV} or "
                             "--api-key-file, or pass --insecure")
        if args.ab_log_dir and not args.arms:
            raise ValueError("--ab-log-dir needs --arms")
        if args.arms:
            from agents.serving.arms import load_arms_file

            load_arms_file(args.arms)  # bad arms exit here, naming what is wrong
            if log_key is None:
                raise ValueError(f"--arms needs a log key (--log-key-file or ${LOG_KEY_ENV}): users are assigned "
                                 "to arms by the keyed hash of their id, which must not change on a restart")
        artifact = resolve_artifact(args.path, args.format)
        conf = {"artifact": str(artifact), "redis": args.redis, "time_budget_ms": args.time_budget_ms,
                "session_timeout_s": args.session_timeout_s, "max_candidates": args.max_candidates,
                "max_body_bytes": args.max_body_bytes, "cf_fold_in": not args.no_cf_fold_in,
                "model_threads": args.model_threads, "api_key": api_key, "state_ttl_s": args.state_ttl_s,
                "log_key": log_key, "arms": args.arms and str(Path(args.arms).resolve()),
                "ab_log_dir": args.ab_log_dir and str(Path(args.ab_log_dir).resolve())}
        if args.workers == 1:
            app = _build(conf)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 2
    auth = "API key required" if conf["api_key"] else "no authentication"
    print(f"serving {artifact} on http://{args.host}:{args.port} (store: {args.redis or 'in-process'}, {auth})",
          flush=True)
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log,
              "timeout_keep_alive": 5}
    if args.workers == 1:
        uvicorn.run(app, **common)
    else:
        os.environ[CONFIG_ENV] = json.dumps({**conf, "api_key": None, "log_key": None})
        if conf["api_key"]:
            os.environ[API_KEY_ENV] = conf["api_key"]
        if log_key:  # every worker hashes user ids with the same key
            os.environ[LOG_KEY_ENV] = log_key
        uvicorn.run("agents.serving.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0

