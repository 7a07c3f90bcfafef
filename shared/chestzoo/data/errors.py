"""One exception type for bad input, so users see the file (and CSV row) at fault, not a deep traceback."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad or inconsistent input data. The message always names the file, and the CSV row where there is one."""

    def __init__(self, path: str | os.PathLike, problem: str, row: int | None = None):
        where = f"{os.fspath(path)}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path = os.fspath(path)
        self.row = row
        self.problem = problem
