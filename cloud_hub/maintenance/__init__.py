"""Jobs that keep the database's size bounded: rollups of telemetry, and retention."""
