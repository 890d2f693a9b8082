"""`python -m hasync`."""

from hasync.cli import main

main()
