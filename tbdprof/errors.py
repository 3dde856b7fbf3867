"""The one base of every bad-input error: what the user gave cannot be used.

``tbdprof``'s command line prints such an error as one line on stderr and
exits with code 2, never a traceback; any other exception is an internal
error. A light module (standard library only), so that analysis, launch and
the recorder can all derive from it without importing one another.
"""


class UserError(ValueError):
    """Bad input (a missing run folder, a malformed option, an inconsistent launcher environment).

    Derives from :class:`ValueError` so that callers catching that keep working.
    """
