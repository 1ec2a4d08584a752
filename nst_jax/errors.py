"""The one exception type for user mistakes (bad files, bad flags, missing weights).

The CLI prints its message as one sentence and exits non-zero, without a traceback; library
callers can catch it. Programming errors stay ordinary Python exceptions.
"""


class NstError(Exception):
    """A problem with the user's input, files or settings; ``str(err)`` is one clear sentence."""


def first_line(err: BaseException) -> str:
    """The first line of ``str(err)`` (its type's name when empty): a library's error worked into
    one ``NstError`` sentence without its multi-line detail."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
