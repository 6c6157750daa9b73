"""Main API: what users call. Submitting a job stores its image and creates the AIImageJob; reading
a job reads the saga log in its status, so there is one truth, not a table that could disagree."""
