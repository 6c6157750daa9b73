"""The aijobs GPU worker: leases tasks, runs torch pipelines, never loses a finished result."""
