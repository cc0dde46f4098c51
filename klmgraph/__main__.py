"""``python -m klmgraph ...`` (as under ``torchrun -m klmgraph simulate ...``): the command line."""
import sys

from .cli import main

if __name__ == "__main__":  # spawned processes of --nprocs import this module again: no second run
    sys.exit(main())
