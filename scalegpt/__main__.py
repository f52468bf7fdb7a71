"""`python -m scalegpt ...` (what torchrun launches: `torchrun ... -m scalegpt train ...`)."""
import os
import sys

from scalegpt.cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
    # Under torchrun, the work is done and the process group destroyed: leave without running C++ static
    # destructors, where a still-joinable gloo/store thread can call std::terminate and turn a finished rank's
    # exit code 0 into SIGABRT (seen rarely on CPU/gloo).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
