"""Background work of the hub: training jobs."""
