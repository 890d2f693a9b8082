"""The node agent: a Node served over HTTP (`app`), its routes (`routes/`), connection guard and input checks."""
