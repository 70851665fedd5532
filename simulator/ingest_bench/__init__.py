"""The ingest benchmark's parts; ``bench/ingest.py`` is its command line and says what it
measures.

``machine`` reads processes and the machine (CPU, RSS, the speed probe); ``hubs`` runs the
hubs under test and sets up who publishes to them; ``measured_run`` offers one flood and
measures it; ``saturation`` finds the saturation rate and offers twice it; ``cases`` runs one
database and batch size, or two hubs; ``rollups`` times the rollup query; ``report`` sums the
cases up and prints the tables.
"""
