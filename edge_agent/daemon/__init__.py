"""Running the agent as a service: signals, systemd notifications, logging."""
