"""The node agent: HTTP server, peer client, authentication."""
