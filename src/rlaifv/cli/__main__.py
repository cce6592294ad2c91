"""`python -m rlaifv.cli` (and `accelerate launch -m rlaifv.cli`) runs the command line."""

from rlaifv.cli import main

main()
