"""scalegpt: pretrain GPT-style language models from a laptop CPU to many GPUs."""
__version__ = "0.1.0"

from scalegpt.config import GPTConfig  # noqa: E402
from scalegpt.errors import ScalegptError  # noqa: E402

__all__ = ["GPT", "GPTConfig", "ScalegptError", "__version__"]


def __getattr__(name):
    # `scalegpt.GPT` imports torch only when asked for, so the config and the CLI's --help load without it.
    if name == "GPT":
        from scalegpt.model import GPT

        return GPT
    raise AttributeError(f"module 'scalegpt' has no attribute {name!r}")
