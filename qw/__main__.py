"""`python -m qw` is the `qw` command."""

from qw.cli import main

main()
