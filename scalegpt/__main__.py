"""`python -m scalegpt ...` (what torchrun launches: `torchrun ... -m scalegpt train ...`)."""
import sys

from scalegpt.cli import main

sys.exit(main())
