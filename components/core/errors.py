"""Errors that the CLI reports as one clear message and a non-zero exit."""


class SortflowError(Exception):
    """A problem the user can fix; the message names the file, the line and the fix."""


class ParamsError(SortflowError):
    """A parameter file or override that is not valid."""


class DatasetError(SortflowError):
    """A dataset that cannot be read, converted or split."""


class ServiceError(SortflowError):
    """A service (DVC remote, MLflow or Prefect server, Triton) that cannot be reached; retrying may help."""
