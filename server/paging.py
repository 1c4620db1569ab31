"""One page shape for every list route, and its one maximum page size.

``GET`` list routes take ``limit`` (1 to :data:`MAX_LIMIT`) and ``offset`` (the query
parameters ``server.deps.Limit`` and ``server.deps.Offset``) and answer a :class:`Page` of their
item type; the database side is :func:`server.db.paging.paginate`. No web framework here: the
services and the worker import the schemas that use this.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

MAX_LIMIT = 1000


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` matching the filters, and the window asked for."""

    items: list[T]
    total: int = Field(description="how many items match the filters, over all pages")
    limit: int = Field(description="the page size asked for")
    offset: int = Field(description="how many matching items were skipped")
