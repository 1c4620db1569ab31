"""Spike-upload ingest: parse (NWB, CSV, Parquet), validate, count responses, bulk-write."""
