"""The edge benches' parts; ``bench/edge.py`` and ``bench/edge_daemon.py`` are their command
lines and say what they measure.

``agent_memory`` reads an agent process's memory and what each of its imports costs (both
benches). For ``bench/edge.py``: ``default_model`` trains, converts and signs the model;
``tflite_timer`` times it in a child interpreter without TensorFlow; ``agent_soak`` runs and
samples a real agent; ``agent_report`` sums its runs up and prints them. For
``bench/edge_daemon.py``: ``skab_model`` trains its model on SKAB and times the invoke;
``daemon_agent`` runs and measures a real agent; ``link_recovery`` replays an outbox and
restarts the broker under many links; ``private_broker`` is what those share.

Nothing here imports TensorFlow at import time: the bench processes that use these modules
import it where they train.
"""
