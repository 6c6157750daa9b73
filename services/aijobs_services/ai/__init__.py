"""AI: the task registry and the lease-based queue GPU workers pull from."""
