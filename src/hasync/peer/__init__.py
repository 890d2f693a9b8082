"""The peer: the wire formats two agents speak and the client one agent (or the CLI) calls another with."""
