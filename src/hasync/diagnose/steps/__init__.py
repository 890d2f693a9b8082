"""The steps of the procedure, one module each, run in this order by the runner."""
