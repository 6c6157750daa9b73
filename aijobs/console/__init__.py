"""``aijobs admin …`` (platform teams) and ``aijobs submit`` / ``aijobs jobs …`` (users): the
commands that replace curl and hand-signed tokens. Plain synchronous code at the edge."""
