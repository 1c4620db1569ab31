#!/usr/bin/env bash
# Development only, while the project has not shipped: rebuild the single initial migration
# from the ORM models against a scratch SQLite database. Once a lab runs itloop, add new
# revisions with `alembic revision --autogenerate` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
rm -f migrations/versions/*_initial_schema.py
ITLOOP_DATABASE_URL="sqlite:///$tmp/regen.db" .venv/bin/alembic revision --autogenerate -m "initial schema" --rev-id 0001 >/dev/null 2>&1
sed -i "s/astext_type=Text()/astext_type=sa.Text()/" migrations/versions/*_initial_schema.py
.venv/bin/ruff format -q migrations/versions/ || true
rm -rf "$tmp"
ls migrations/versions/
