#!/usr/bin/env bash
# Prestart for a deployment: wait for the database, migrate, seed the bootstrap admin.
set -euo pipefail
python - <<'PY'
import sys, time
from pydantic import ValidationError
from sqlalchemy import create_engine, text
from itloop.settings import describe_settings_error, get_settings

try:
    url = get_settings().resolved_database_url
except ValidationError as exc:  # e.g. ITLOOP_ENV=production with a weak secret: say why, no traceback
    sys.exit(f"error: {describe_settings_error(exc)}")
for attempt in range(60):
    try:
        with create_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        break
    except Exception as exc:  # noqa: BLE001
        print(f"waiting for database ({exc.__class__.__name__})", file=sys.stderr)
        time.sleep(2)
else:
    sys.exit("database did not come up in 120 s")
PY
itloop db upgrade
