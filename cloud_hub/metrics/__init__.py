"""The hub process's own figures: the commit-time histogram and the Prometheus text format."""
