"""The one exception type for bad user input: the CLI prints its message as a single sentence."""


class UserError(Exception):
    """Bad input (config key, data row, checkpoint, tokenizer) that the user can fix."""
