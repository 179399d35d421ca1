"""The routers, one module per resource: parse, one domain call, a view."""
