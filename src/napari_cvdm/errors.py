"""Exceptions shared by the library, the command line and the widgets."""


class Cancelled(Exception):
    """Raised when a prediction or training run is cancelled; nothing partial is returned."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is kept."""
