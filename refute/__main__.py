"""`python -m refute` runs the command line (as the `refute` script does)."""

from refute.cli import main

main()
