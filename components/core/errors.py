"""Errors that the CLI reports as one clear message and exit 2, never a traceback.

Two kinds, and they mean different things to whoever runs sortflow:
- `InputError` (with `ParamsError` and `DatasetError`): the user fixes something (a file, a setting, an
  earlier step not run yet); the message names the file, the line and the fix. Running again unchanged
  fails the same way, so nothing retries it.
- `ServiceError`: a service (DVC remote, MLflow or Prefect server, Triton) did not answer. Running again may
  succeed; the Prefect flows retry these, and only these.
"""


class SortflowError(Exception):
    """Any error sortflow reports as one message and exit 2; catch this to handle both kinds."""


class InputError(SortflowError):
    """A problem the user can fix; the message names the file, the line and the fix."""


class ParamsError(InputError):
    """A parameter file or override that is not valid."""


class DatasetError(InputError):
    """A dataset that cannot be read, converted or split."""


class ServiceError(SortflowError):
    """A service that did not answer in time; retrying may help."""


def retryable(outcome: object) -> bool:
    """Whether a step that ended with `outcome` (its exception, or its result) is worth running again."""
    return isinstance(outcome, ServiceError)
