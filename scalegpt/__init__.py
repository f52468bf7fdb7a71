"""scalegpt: pretrain GPT-style language models from a laptop CPU to many GPUs."""
__version__ = "0.1.0"

from scalegpt.errors import ScalegptError  # noqa: E402
from scalegpt.model import GPT, GPTConfig  # noqa: E402

__all__ = ["GPT", "GPTConfig", "ScalegptError", "__version__"]
