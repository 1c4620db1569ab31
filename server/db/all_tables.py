"""Import every table module so ``Base.metadata`` is complete (Alembic and tests use this)."""

from server.analysis import tables as analysis_tables  # noqa: F401
from server.auth import tables as auth_tables  # noqa: F401
from server.batches import tables as batch_tables  # noqa: F401
from server.db.base import Base
from server.images import tables as image_tables  # noqa: F401
from server.jobs import tables as job_tables  # noqa: F401
from server.lab import tables as lab_tables  # noqa: F401
from server.modeling import tables as modeling_tables  # noqa: F401
from server.recordings import tables as recording_tables  # noqa: F401

metadata = Base.metadata
