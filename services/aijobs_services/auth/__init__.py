"""Auth: tenants, users, API tokens (slow-hashed), service identities, and the binding of
Kubernetes namespaces to the accounts they may charge."""
