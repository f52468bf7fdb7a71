"""The one exception type for bad user input: the CLI prints its message as a single line and exits non-zero."""


class ScalegptError(Exception):
    """A problem the user can fix (bad file, bad key, mismatched tokenizer...). The message names what and where."""
