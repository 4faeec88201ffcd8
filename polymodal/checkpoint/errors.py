"""The one exception type of checkpoints: a checkpoint that cannot be saved or opened, said in one line."""


class CheckpointError(RuntimeError):
    """A checkpoint refused (unsafe, damaged) or not saved (disk full).

    The message names the checkpoint and what to do, so the CLI prints it as ``error: <message>`` without a
    traceback.
    """
