"""`python -m pipelines.evaluate`: the transfer evaluation command (kNN, linear probe, fine-tuning; see
pipelines/transfer.py)."""
import sys

from pipelines.transfer import main

if __name__ == "__main__":
    sys.exit(main())
