"""Storage: content-addressed image blobs on a filesystem volume, with their metadata (owner,
job, logical key, hash, size, type, state) in Storage's own database."""
