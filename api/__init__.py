"""The HTTP API: routes, HTTP schemas, error mapping."""
