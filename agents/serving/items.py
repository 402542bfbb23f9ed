"""``POST /items``: add new items (cold start) to the live catalog (docs/serving.md, "New items").

    {"items": [{"id": "item-new-1", "text": "…", "category": "scifi", "price": 12.5}, …]}
    → 201 {"added": ["item-new-1", …], "n_items": 3001}

Errors: 409 ``duplicate_items`` (an id repeated in the request or already in the catalog), 409
``encoder_mismatch`` (the run's encoder cannot be built here, or is another), 409 ``items_unavailable`` (an artifact
exported before items.npz kept prices and category names), 422 ``invalid_request`` (empty text, unknown category,
a price that is negative, not finite or not a number, too many items, a malformed item).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints, ValidationError

from agents.serving.catalog import (
    MAX_NEW_ITEMS,
    DuplicateItemsError,
    EncoderMismatchError,
    ItemsUnavailableError,
    NewItem,
)
from agents.serving.errors import InvalidRequestError

MAX_TEXT_LEN = 10_000


class ItemBody(BaseModel):
    """One new item."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_LEN)]
    category: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    price: Annotated[StrictFloat | StrictInt, Field(ge=0.0, allow_inf_nan=False)]


class AddItemsBody(BaseModel):
    """``POST /items``."""

    model_config = ConfigDict(extra="forbid")
    items: Annotated[list[ItemBody], Field(min_length=1, max_length=MAX_NEW_ITEMS)]


def _error(status: int, code: str, detail: Any) -> Response:
    return Response(json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode(),
                    status_code=status, media_type="application/json")


def register_items(app: FastAPI, runtime: Any, call: Callable[..., Awaitable[Any]],
                   validation_error: Callable[..., Response]) -> None:
    """Add the ``POST /items`` route to ``app`` (the API key applies, as to every path but ``/health``).

    Args:
        app: The service's app.
        runtime: Its :class:`agents.serving.ServingRuntime`.
        call: How the app runs runtime methods (inline or in the threadpool).
        validation_error: The app's 400 / 422 answer to a body that breaks the schema.
    """

    async def add_items(request: Request) -> Response:
        raw = await request.body()
        try:
            body = AddItemsBody.model_validate_json(raw)
        except ValidationError as exc:
            return validation_error(exc.errors(include_url=False, include_input=False), prefix=["body"])
        items = [NewItem(i.id, i.text, i.category, float(i.price)) for i in body.items]
        try:
            added = await call(runtime.add_items, items)
        except DuplicateItemsError as exc:
            return _error(409, "duplicate_items", {"duplicates": exc.duplicates[:50], "count": len(exc.duplicates),
                                                   "message": str(exc)})
        except EncoderMismatchError as exc:
            return _error(409, "encoder_mismatch", str(exc))
        except ItemsUnavailableError as exc:
            return _error(409, "items_unavailable", str(exc))
        except InvalidRequestError as exc:
            return _error(422, "invalid_request", str(exc))
        return Response(json.dumps({"added": added, "n_items": runtime.items.n_items}, separators=(",", ":")).encode(),
                        status_code=201, media_type="application/json")

    app.router.add_route("/items", add_items, methods=["POST"])
