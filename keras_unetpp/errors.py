"""The exceptions keras_unetpp raises for what its user got wrong.

Two kinds of failure reach a user, and they must look different:

- **Input errors**: a bad argument, path, setting or file. The message says
  what was received and what was expected; the command line prints it as
  one line and exits with status 2. These are `InputError`s (a subclass of
  `ValueError`, so `except ValueError` in library code keeps working).
- **Bugs**: anything else. The command line lets them through with their
  traceback (exit status 1), so that they are reported, not hidden.

`DataError` is the input error of a bad data file (unreadable, truncated,
empty, NaN pixels, a mask that does not fit, a missing partner); it names
the file.
"""


class InputError(ValueError):
    """A bad argument, path, setting or file given by the user.

    Example:

    ```python
    raise InputError(f"`depth` must be between 1 and 6. Received: depth={depth}")
    ```
    """


class DataError(InputError):
    """A data file that cannot be used, with the file's path.

    Args:
        message: str, what is wrong and what was expected.
        path: str or path-like, the file (or `None` if no single file is at
            fault). Defaults to `None`.

    Example:

    ```python
    raise DataError(f"{path}: truncated PNG", path=path)
    ```
    """

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self):
        return (type(self), (str(self), self.path))
