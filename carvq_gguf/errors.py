"""The one error every layer raises for bad input; it imports nothing, so any layer may use it."""


class CarvqError(ValueError):
    """Bad input or inconsistent CARVQ data; the message names the problem."""
