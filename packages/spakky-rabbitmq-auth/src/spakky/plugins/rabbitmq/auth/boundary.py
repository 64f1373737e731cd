"""The consume interceptor that turns a signed snapshot header into the handler's AuthContext."""

import inspect
import logging
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import override

from spakky.auth.constants import (
    AUTH_CONTEXT_CONTEXT_KEY,
    AUTH_CONTEXT_SNAPSHOT_HEADER_KEY,
    AUTH_CONTEXT_SNAPSHOT_METADATA_KEY,
)
from spakky.auth.context import AuthContext, store_auth_context
from spakky.auth.decision import AuthorizationDecisionState, AuthorizationReasonCode
from spakky.auth.error import (
    AuthContextNotFoundError,
    AuthContextSnapshotError,
    AuthRequirementDeniedError,
    AuthRequirementProviderUnavailableError,
    AuthVerificationProviderUnavailableError,
    ExpiredAuthContextSnapshotError,
    MissingAuthContextSnapshotError,
)
from spakky.auth.invocation import AuthInvocation, AuthInvocationAttribute
from spakky.auth.metadata import get_effective_auth_metadata
from spakky.auth.ports import IAuthContextSnapshotVerifier
from spakky.core.pod.annotations.pod import Pod
from spakky.core.pod.interfaces.application_context import IApplicationContext
from spakky.core.pod.interfaces.aware.application_context_aware import IApplicationContextAware
from spakky.domain.models.event import AbstractEvent

from spakky.plugins.rabbitmq.auth.errors import AmbiguousAuthSnapshotError
from spakky.plugins.rabbitmq.config.settings import (
    RabbitMQConnectionConfig,
    RabbitMQMessageAction,
    env_var,
)
from spakky.plugins.rabbitmq.consumer.interceptor import (
    HandlerInfo,
    IConsumeInterceptor,
    InboundMessage,
    MessageRejected,
)

logger = logging.getLogger(__name__)

_NOTHING = nullcontext()

SNAPSHOT_HEADERS = (AUTH_CONTEXT_SNAPSHOT_METADATA_KEY, AUTH_CONTEXT_SNAPSHOT_HEADER_KEY)
"""Headers read for the signed snapshot, in order of preference."""

AUTH_BOUNDARY = "event"
"""``AuthInvocation.boundary`` of every verification this package asks for."""


def read_snapshot(headers: Mapping[str, str]) -> str | None:
    """The snapshot a message carries, or None when neither header holds one.

    Raises:
        AmbiguousAuthSnapshotError: both headers are set, to different values.
    """
    preferred, other = (headers.get(name) for name in SNAPSHOT_HEADERS)
    if preferred and other and preferred != other:
        raise AmbiguousAuthSnapshotError(
            f"headers {' and '.join(SNAPSHOT_HEADERS)} carry different snapshots"
        )
    return preferred or other or None


@Pod()
class RabbitMQAuthBoundary(IConsumeInterceptor, IApplicationContextAware):
    """Verifies the signed auth snapshot of each message before its handler runs.

    The verified `AuthContext` is stored in the application context for the
    handler call only. A protected handler without a valid snapshot, or whose
    requirement is denied, never runs its body; the message is settled with
    ``AUTH_CHALLENGE_ACTION``, ``AUTH_DENY_ACTION`` or ``AUTH_ERROR_ACTION``.
    """

    def __init__(
        self,
        config: RabbitMQConnectionConfig,
        verifier: IAuthContextSnapshotVerifier | None = None,
    ) -> None:
        self._actions = {
            AuthorizationDecisionState.CHALLENGE: config.auth_challenge_action,
            AuthorizationDecisionState.DENY: config.auth_deny_action,
            AuthorizationDecisionState.ERROR: config.auth_error_action,
        }
        self._verifier = verifier
        self._application_context: IApplicationContext | None = None
        self._protected: dict[str, bool] = {}
        if config.auth_error_action is RabbitMQMessageAction.NACK_REQUEUE and not (
            config.requeue_delay
        ):
            logger.warning(
                "%s is nack_requeue and %s is 0: a message whose snapshot cannot be verified "
                "will be redelivered without pause while the verifier is unavailable",
                env_var("auth_error_action"),
                env_var("requeue_delay"),
            )

    @override
    def set_application_context(self, application_context: IApplicationContext) -> None:
        self._application_context = application_context

    @override
    def intercept(
        self, message: InboundMessage, handler: HandlerInfo, event: AbstractEvent
    ) -> AbstractContextManager[None]:
        protected = self.is_protected(handler)
        auth_context = self._authenticate(message, handler, protected=protected)
        if auth_context is None:
            return _NOTHING  # nothing to check and nothing to store: the handler runs as before
        return self._guard(auth_context, message, handler, protected=protected)

    def is_protected(self, handler: HandlerInfo) -> bool:
        """Whether spakky-auth metadata (``@protected``, ``require_*``) guards this handler."""
        known = self._protected.get(handler.handler_id)
        if known is None:
            known = _has_requirements(handler)
            self._protected[handler.handler_id] = known
        return known

    @contextmanager
    def _guard(
        self,
        auth_context: AuthContext,
        message: InboundMessage,
        handler: HandlerInfo,
        *,
        protected: bool,
    ) -> Generator[None]:
        application_context = self._application_context
        if application_context is None:
            raise self._reject(
                AuthorizationDecisionState.ERROR,
                AuthorizationReasonCode.INTERNAL_ERROR,
                message,
                handler,
                "the boundary has no application context to store the AuthContext in",
            )
        store_auth_context(application_context, auth_context)
        try:
            yield
        except (
            AuthRequirementDeniedError,
            AuthContextNotFoundError,
            AuthRequirementProviderUnavailableError,
        ) as error:
            if not protected:
                raise
            raise self._refused(error, message, handler) from error
        finally:
            # The handler returned: later code on this task or thread must not see the context.
            application_context.set_context_value(AUTH_CONTEXT_CONTEXT_KEY, None)

    def _authenticate(
        self, message: InboundMessage, handler: HandlerInfo, *, protected: bool
    ) -> AuthContext | None:
        """The verified AuthContext, None when there is none to store, or `MessageRejected`."""
        challenge = AuthorizationDecisionState.CHALLENGE
        try:
            snapshot = read_snapshot(message.headers)
        except AmbiguousAuthSnapshotError as error:
            raise self._reject(
                challenge, AuthorizationReasonCode.SNAPSHOT_INVALID, message, handler, str(error)
            ) from None
        if snapshot is None:
            if not protected:
                return None
            raise self._reject(
                challenge, AuthorizationReasonCode.SNAPSHOT_MISSING, message, handler, "no snapshot"
            )

        verifier = self._verifier
        if verifier is None:
            if not protected:
                logger.debug(
                    "message %s to %s: no IAuthContextSnapshotVerifier, snapshot ignored",
                    message.message_id,
                    handler.handler_id,
                )
                return None
            raise self._reject(
                AuthorizationDecisionState.ERROR,
                AuthorizationReasonCode.VERIFICATION_PROVIDER_UNAVAILABLE,
                message,
                handler,
                "no IAuthContextSnapshotVerifier is registered",
            )

        try:
            return verifier.verify_snapshot(snapshot, _invocation(message, handler))
        except AuthVerificationProviderUnavailableError:
            state, code = (
                AuthorizationDecisionState.ERROR,
                AuthorizationReasonCode.VERIFICATION_PROVIDER_UNAVAILABLE,
            )
            error_name = "AuthVerificationProviderUnavailableError"
        except ExpiredAuthContextSnapshotError:
            state, code = challenge, AuthorizationReasonCode.SNAPSHOT_EXPIRED
            error_name = "ExpiredAuthContextSnapshotError"
        except MissingAuthContextSnapshotError:
            state, code = challenge, AuthorizationReasonCode.SNAPSHOT_MISSING
            error_name = "MissingAuthContextSnapshotError"
        except AuthContextSnapshotError as error:
            state, code = challenge, AuthorizationReasonCode.SNAPSHOT_INVALID
            error_name = type(error).__name__
        except Exception as error:
            # A verifier that fails in an unforeseen way proves nothing about the snapshot.
            state, code = AuthorizationDecisionState.ERROR, AuthorizationReasonCode.INTERNAL_ERROR
            error_name = type(error).__name__
        raise self._reject(state, code, message, handler, f"verifier raised {error_name}")

    def _refused(
        self, error: Exception, message: InboundMessage, handler: HandlerInfo
    ) -> MessageRejected:
        """Map what the auth aspect raised in place of the handler to an outcome."""
        if isinstance(error, AuthRequirementProviderUnavailableError):
            return self._reject(
                AuthorizationDecisionState.ERROR,
                AuthorizationReasonCode.INTERNAL_ERROR,
                message,
                handler,
                "no provider checks a requirement of this handler",
            )
        if isinstance(error, AuthContextNotFoundError):
            return self._reject(
                AuthorizationDecisionState.CHALLENGE,
                AuthorizationReasonCode.SNAPSHOT_MISSING,
                message,
                handler,
                "the auth aspect found no AuthContext",
            )
        decision = error.decision if isinstance(error, AuthRequirementDeniedError) else None
        state = AuthorizationDecisionState.DENY
        code = AuthorizationReasonCode.POLICY_DENIED
        if decision is not None and decision.state in self._actions:
            state, code = decision.state, decision.reason_code
        return self._reject(state, code, message, handler, "requirement not allowed")

    def _reject(
        self,
        state: AuthorizationDecisionState,
        code: AuthorizationReasonCode,
        message: InboundMessage,
        handler: HandlerInfo,
        detail: str,
    ) -> MessageRejected:
        action = self._actions[state]
        # Never the snapshot itself: it is a bearer credential until it expires.
        logger.warning(
            "auth %s (%s) for message %s on %s to %s: %s -> %s",
            state.value,
            code.value,
            message.message_id,
            message.queue,
            handler.handler_id,
            detail,
            action.value,
        )
        return MessageRejected(action, f"auth_{state.value.lower()}:{code.value}")


def _invocation(message: InboundMessage, handler: HandlerInfo) -> AuthInvocation:
    return AuthInvocation(
        boundary=AUTH_BOUNDARY,
        operation=handler.handler_id,
        attributes=(
            AuthInvocationAttribute(name="event_name", value=message.event_name),
            AuthInvocationAttribute(name="queue", value=message.queue),
            AuthInvocationAttribute(name="message_id", value=message.message_id),
        ),
    )


def _has_requirements(handler: HandlerInfo) -> bool:
    """Look through every decorator layer, as the consumer does when it finds the route."""
    owner_type = handler.owner_type
    if owner_type is not None and handler.method_name is not None:
        start: object = inspect.getattr_static(owner_type, handler.method_name, None)
    else:
        start = handler.call
    if start is None:
        return False
    for layer in _layers(start):
        if get_effective_auth_metadata(layer, owner_type=owner_type).protected:
            return True
    return owner_type is not None and get_effective_auth_metadata(owner_type).protected


def _layers(function: object) -> Iterator[object]:
    seen: set[int] = set()
    current: object | None = function
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        unwrap: Callable[..., object] | None = getattr(current, "__func__", None)
        current = unwrap if unwrap is not None else getattr(current, "__wrapped__", None)
