"""AWS clients, built once per container, whose credentials are resolved on first use.

A client is expensive to build (botocore loads its service model, endpoint rules and partitions:
tens of ms), and holds nothing secret until it signs a request: what would make it unfit for a
SnapStart snapshot is only that botocore resolves the credentials while it builds it (for a Lambda
function, a request to the container credentials endpoint) and keeps them. So the client here is
built on a botocore session whose credential provider hands out DeferredCredentials: they run the
default credential chain (environment, container credentials endpoint, profiles, ...) at the
first signed request, in the container that makes it, not before. Under SnapStart the client is
built before the snapshot (chalicelib/snapstart.py) and each restored container, after `reset()`,
resolves its own credentials and opens its own connections.
"""
from __future__ import annotations

import datetime
import functools
import logging
import threading
import weakref

logger = logging.getLogger(__name__)

#: How often credentials with no expiry of their own (environment variables, a profile's static
#: keys) are read again through the chain, so a change to them is picked up without a new container.
RECHECK_SECONDS = 300
#: The calls the key store makes, prepared before a snapshot (see `warm_up`).
KEY_STORE_OPERATIONS = ("GetSecretValue", "ListSecretVersionIds")


@functools.lru_cache(maxsize=1)
def secrets_manager():
    """The container's Secrets Manager client, built on first use (or before a snapshot)."""
    return new_secrets_manager()


def new_secrets_manager():
    """A Secrets Manager client with the service's timeouts and retries (honours AWS_ENDPOINT_URL_SECRETS_MANAGER).

    It holds no credentials until its first signed request (see the module's docstring)."""
    from botocore.config import Config

    # Worst case 3 attempts x (2 + 3) s plus backoff: an outage answers 503 inside API Gateway's 29 s.
    config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=2, read_timeout=3)
    session, provider = deferred_session()
    client = session.create_client("secretsmanager", config=config)
    _credentials[client] = provider.credentials
    return client


_credentials: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # client -> its DeferredCredentials


def _now() -> datetime.datetime:
    """The DeferredCredentials' clock (a test moves it)."""
    return datetime.datetime.now(datetime.timezone.utc)


def deferred_session():
    """A botocore session whose credentials are DeferredCredentials over its own default chain, and
    that credential provider."""
    import botocore.session

    session = botocore.session.Session()
    provider = _DeferredProvider(session)
    session.register_component("credential_provider", provider)
    return session, provider


def _make_deferred_credentials(session):
    from botocore.credentials import Credentials, ReadOnlyCredentials, create_credential_resolver

    class DeferredCredentials(Credentials):
        """Credentials read through the default chain at their first use, not before (botocore's own
        DeferredRefreshableCredentials in spirit, without its date parsing and refresh windows).

        What the chain gives is held as botocore gives it: refreshable credentials (the container
        credentials endpoint, an assumed role) refresh themselves before they expire (botocore: from
        15 min before, blocking from 10 min); they are asked for their current value again whenever
        RECHECK_SECONDS have passed, well inside those windows. Credentials with no expiry of their own
        (static keys in the environment or a profile) are looked up again through the whole chain every
        RECHECK_SECONDS. Signers read them only through get_frozen_credentials(), one consistent set.
        """

        method = "deferred-default-chain"

        def __init__(self):  # noqa: D107  (Credentials.__init__ would take the keys at once: not called)
            self._lock = threading.Lock()
            self._resolver = None  # the default chain's providers, built (not asked) ahead by `prepare`
            self._resolver_asked = False
            self._source = None  # what the chain gave
            self._frozen = None
            self._recheck_at = None

        access_key = property(lambda self: self.get_frozen_credentials().access_key)
        secret_key = property(lambda self: self.get_frozen_credentials().secret_key)
        token = property(lambda self: self.get_frozen_credentials().token)
        account_id = property(lambda self: self.get_frozen_credentials().account_id)

        @property
        def resolved(self) -> bool:
            """Whether the chain has been asked (whether this object holds credentials)."""
            return self._frozen is not None or self._source is not None

        def prepare(self) -> None:
            """Build the default chain's providers without asking any of them (no credentials read,
            no request made): what the first signed request would otherwise build (~3 ms)."""
            with self._lock:
                if self._resolver is None:
                    self._resolver = self._new_resolver()

        def forget(self) -> None:
            """Back to unresolved: the next signed request runs the chain again. A chain that was asked
            is dropped too (an assumed role's cache lives in it); one only prepared is kept."""
            with self._lock:
                if self._resolver_asked:
                    self._resolver, self._resolver_asked = None, False
                self._source = self._frozen = self._recheck_at = None

        def get_frozen_credentials(self):
            with self._lock:
                now = _now()
                if self._frozen is None or now >= self._recheck_at:
                    try:
                        self._frozen = self._ask()
                    except Exception:
                        # Refreshable credentials decide for themselves: they raise only once what they
                        # hold is about to expire. Static ones are kept if looking them up again fails.
                        if self._frozen is None or hasattr(self._source, "refresh_needed"):
                            raise
                        logger.warning("looking up the AWS credentials again failed; using the ones held")
                    self._recheck_at = now + datetime.timedelta(seconds=RECHECK_SECONDS)
                return self._frozen

        def _ask(self):
            from botocore.exceptions import NoCredentialsError

            source = self._source
            if source is None or not hasattr(source, "refresh_needed"):
                # First use, or static credentials: run the chain (cheap for environment variables).
                if self._resolver is None:
                    self._resolver = self._new_resolver()
                self._resolver_asked = True
                source = self._resolver.load_credentials()
                if source is None:
                    raise NoCredentialsError()
                self._source = source
            frozen = source.get_frozen_credentials()  # refreshable credentials refresh themselves here
            return ReadOnlyCredentials(frozen.access_key, frozen.secret_key, frozen.token,
                                       getattr(frozen, "account_id", None))

        @staticmethod
        def _new_resolver():
            return create_credential_resolver(session, region_name=session.get_config_variable("region"))

    return DeferredCredentials()


class _DeferredProvider:
    """The session's credential_provider component: no lookup at all, only deferred credentials."""

    def __init__(self, session):
        self._session = session
        self.credentials = None

    def load_credentials(self):
        if self.credentials is None:
            self.credentials = _make_deferred_credentials(self._session)
        return self.credentials


def credentials_of(client):
    """The DeferredCredentials a client of `new_secrets_manager` signs with (None for another client)."""
    return _credentials.get(client)


def reset(client) -> None:
    """Whatever a client may hold that a container restored from a snapshot must not share with the
    others: resolved credentials (the next signed request resolves them again) and pooled connections
    (closed; the next request opens its own). The client itself, its models and rules, is kept."""
    credentials = credentials_of(client)
    if credentials is not None:
        credentials.forget()
    client.close()


def warm_up(client, operations=KEY_STORE_OPERATIONS) -> None:
    """Load what a client of `new_secrets_manager` loads lazily at its first call of each operation,
    without credentials and without a connection: botocore's operation model and shapes, the endpoint
    rules evaluated for this region and endpoint, the serializer, the event handler lookups, the
    retry handler and the response parser, by one dry call of each operation, unsigned (so no
    credentials are asked for) and answered by a stand-in response (so nothing is sent). And the
    default credential chain, built, not asked. For a client to be snapshotted (chalicelib/snapstart.py).
    """
    import botocore
    from botocore.awsrequest import AWSResponse

    credentials = credentials_of(client)
    if credentials is not None:
        credentials.prepare()
    client.exceptions  # noqa: B018  (built on first access)
    service_id = client.meta.service_model.service_id.hyphenize()
    events = client.meta.events

    class _Body:
        def __init__(self, data: bytes):
            self._data = data

        def stream(self, **_):
            yield self._data

    def unsigned(**_):
        return botocore.UNSIGNED

    def stand_in(request, **_):
        return AWSResponse(request.url, 200, {"x-amzn-RequestId": "warm-up"}, _Body(b"{}"))

    events.register_first(f"choose-signer.{service_id}", unsigned, unique_id="dashboard-auth-warm-up-signer")
    events.register_first(f"before-send.{service_id}", stand_in, unique_id="dashboard-auth-warm-up-send")
    try:
        for operation in operations:
            model = client.meta.service_model.operation_model(operation)
            request = {name: "warm-up" for name in model.input_shape.required_members}
            getattr(client, botocore.xform_name(operation))(**request)
    finally:
        events.unregister(f"choose-signer.{service_id}", unique_id="dashboard-auth-warm-up-signer")
        events.unregister(f"before-send.{service_id}", unique_id="dashboard-auth-warm-up-send")


def built() -> bool:
    """Whether this container's Secrets Manager client exists (without building it)."""
    return secrets_manager.cache_info().currsize > 0
