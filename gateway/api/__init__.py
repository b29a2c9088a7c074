"""The HTTP layer: routes, request and response schemas, middleware, API keys and limits."""
