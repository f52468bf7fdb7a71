"""`python -m scalegpt ...` (what torchrun launches: `torchrun ... -m scalegpt train ...`)."""
from scalegpt.cli import run

run()
