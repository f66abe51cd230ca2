"""The one exception every module may raise for bad input. It lives apart from utils.py so
that dataset.py (which utils.py reads for the --dataset choices) imports no entry-script helpers."""


class UserError(Exception):
    """Bad input: printed as one line, without a traceback, and exit code 2."""
