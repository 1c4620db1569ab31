"""One way to cut a list query into pages: the total that match, and one window of rows.

Every list route (and the job package's job and night lists) pages through :func:`paginate`, so
the count and the window are always taken from the same filtered query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Select, func, select
from sqlalchemy.orm import Session


def paginate(
    session: Session,
    query: Select[Any],
    *,
    order_by: Sequence[Any],
    limit: int,
    offset: int,
    columns: Sequence[Any] = (),
    options: Sequence[Any] = (),
) -> tuple[list[Row[Any]], int]:
    """Rows ``offset`` to ``offset + limit`` of ``query`` in ``order_by`` order, and how many match.

    ``columns`` are added to each row (e.g. correlated counts) after counting, so they never
    change the total; ``options`` are loader options (``joinedload``...).
    """
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    window = query.add_columns(*columns).options(*options).order_by(*order_by).limit(limit).offset(offset)
    return list(session.execute(window).all()), total
