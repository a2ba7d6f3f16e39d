"""The one retry loop of the package: waits that grow exponentially, with jitter, as a
:class:`~notifelect.RetryPolicy` says. The election's reconnects and the command line's
use it."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_never
from tenacity.wait import wait_exponential, wait_random

from .errors import ConfigurationError, SchemaError
from .settings import RetryPolicy


def _worth_retrying(exc: BaseException) -> bool:
    """Errors, except those that no retry can fix (a missing schema, bad settings)."""
    return isinstance(exc, Exception) and not isinstance(exc, SchemaError | ConfigurationError)


def retrying(
    policy: RetryPolicy, *, retry_on: Callable[[BaseException], bool] = _worth_retrying
) -> AsyncRetrying:
    """``async for attempt in retrying(policy): with attempt: ...`` retries what
    ``retry_on`` accepts and raises anything else at once (the last error once
    ``policy.attempts`` ran out). A cancellation is never retried."""
    return AsyncRetrying(
        wait=wait_exponential(multiplier=policy.initial, max=policy.maximum)
        + wait_random(0, policy.jitter),
        stop=stop_never if policy.attempts is None else stop_after_attempt(policy.attempts),
        # A cancellation (BaseException) must end the loop at once, whatever retry_on says.
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and retry_on(exc)),
        reraise=True,
    )
