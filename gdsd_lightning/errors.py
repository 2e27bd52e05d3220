"""Exception types for what the user can act on: the CLI prints their message as a single sentence."""


class UserError(Exception):
    """Bad input (config key, data row, checkpoint, tokenizer) that the user can fix."""


class TrainingStopped(UserError):
    """A run stopped by one of its guards (non-finite steps, nothing to train on) before max_steps;
    its model and summary (with the reason) are saved before this propagates."""
