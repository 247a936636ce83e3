"""Errors meant for the user: one line, saying what is wrong and how to fix it.

The CLI prints these without a traceback and exits non-zero; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""


class DataError(UserError, ValueError):
    """A problem in a data file, naming the file, row, column and problem."""

    def __init__(self, path, row, column, problem):
        self.path, self.row, self.column, self.problem = str(path), row, column, problem
        where = self.path
        if row is not None:
            where += f": row {row}"
        if column is not None:
            where += f": column '{column}'"
        super().__init__(f"{where}: {problem}")
