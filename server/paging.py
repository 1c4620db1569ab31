"""One page shape and one set of paging parameters for every list route.

``GET`` list routes take ``limit`` (1 to :data:`MAX_LIMIT`) and ``offset`` and answer a
:class:`Page` of their item type; the database side is :func:`server.db.paging.paginate`.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

T = TypeVar("T")

MAX_LIMIT = 1000

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}")]
Offset = Annotated[int, Query(ge=0, description="how many matching items to skip")]


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` matching the filters, and the window asked for."""

    items: list[T]
    total: int = Field(description="how many items match the filters, over all pages")
    limit: int = Field(description="the page size asked for")
    offset: int = Field(description="how many matching items were skipped")
