"""The method registry both adapters share: registration, binding params to a handler's
signature, and turning a handler's outcome into an answer event."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ezipc_proto import ErrorCode, Params, RemoteError

__all__ = ["Handler", "Hooks", "InvalidParams", "PLAIN_RESULTS", "call_handler", "not_found", "log"]

log = logging.getLogger("ezipc")

F = TypeVar("F", bound=Callable[..., Any])

_POK = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KW = inspect.Parameter.KEYWORD_ONLY
_EMPTY = inspect.Parameter.empty


class InvalidParams(RemoteError):
    """The params do not fit the handler's signature: answered -32602 ``Invalid params:
    <why>``; ``str()`` is the why alone."""

    def __init__(self, why: str) -> None:
        super().__init__(ErrorCode.INVALID_PARAMS, f"Invalid params: {why}")
        self.why = why

    def __str__(self) -> str:
        return self.why


class Handler:
    """A registered function with its parameter binder prepared once.

    Binding: a list binds by position, a dict by name, absent params bind nothing; a
    parameter named ``remote`` is not bound from params but receives the calling
    ``Remote``, and one named ``cancelled`` receives the request's cancellation token (an
    event set when the peer cancels it or the connection ends). The common signature
    (plain positional-or-keyword parameters) is bound by a fast path; anything else
    (``*args``, ``**kwargs``, keyword-only, positional-only) goes through
    ``inspect.Signature.bind``.
    """

    __slots__ = (
        "fn",
        "name",
        "is_async",
        "wants_remote",
        "wants_cancelled",
        "_names",
        "_name_set",
        "_fast",
        "_required",
        "_simple",
        "_sig",
        "_full",
    )

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"handler for {name!r} is not callable: {fn!r}")
        self.fn = fn
        self.name = name
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004  (callable objects with async __call__)
        )
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature: accept anything
            sig = inspect.Signature(
                [
                    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                    inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
                ]
            )
        remote = sig.parameters.get("remote")
        self.wants_remote = remote is not None and remote.kind in (_POK, _KW)
        cancelled = sig.parameters.get("cancelled")
        self.wants_cancelled = cancelled is not None and cancelled.kind in (_POK, _KW)
        given = {"remote"} if self.wants_remote else set()
        if self.wants_cancelled:
            given.add("cancelled")
        params = [p for p in sig.parameters.values() if p.name not in given]
        self._full = sig
        self._sig = sig.replace(parameters=params)
        self._simple = all(p.kind is _POK for p in params)
        self._names = tuple(p.name for p in params)
        self._name_set = frozenset(self._names)
        self._required = frozenset(p.name for p in params if p.default is _EMPTY)
        self._fast = self._simple and not given  # (see bind)

    def __repr__(self) -> str:
        return f"<Handler {self.name!r} -> {getattr(self.fn, '__qualname__', self.fn)!r}>"

    def bind(
        self, params: Params, remote: object, cancelled: object = None
    ) -> tuple[tuple[Any, ...] | list[Any], dict[str, Any]]:
        """``(args, kwargs)`` to call the handler with; raises :class:`InvalidParams`."""
        if self._fast:  # plain parameters, and params that fit: ~1 µs less per call
            if type(params) is dict:
                if self._required <= params.keys() <= self._name_set:
                    return (), params
            elif type(params) is list:
                if len(self._required) <= len(params) <= len(self._names):
                    return params, {}
            elif params is None and not self._required:
                return (), {}
        given: dict[str, Any] = {}
        if self.wants_remote:
            given["remote"] = remote
        if self.wants_cancelled:
            given["cancelled"] = cancelled
        kwargs: dict[str, Any]
        if self._simple:
            names = self._names
            if params is None:
                if self._required:
                    raise InvalidParams(f"missing required params: {', '.join(sorted(self._required))}")
                args: tuple[Any, ...] | list[Any] = ()
                kwargs = {}
            elif isinstance(params, list):
                if not len(self._required) <= len(params) <= len(names):
                    raise InvalidParams(f"expected {self._arity()} positional params, got {len(params)}")
                # Only the first len(params) names are bound; defaults fill the rest,
                # so a missing required one is caught above by the count.
                if given:
                    args, kwargs = (), dict(zip(names, params, strict=False))
                else:
                    args, kwargs = params, {}
            else:
                unknown = params.keys() - set(names)
                if unknown:
                    raise InvalidParams(f"unexpected params: {', '.join(sorted(map(str, unknown)))}")
                missing = self._required - params.keys()
                if missing:
                    raise InvalidParams(f"missing required params: {', '.join(sorted(missing))}")
                args, kwargs = (), params
        else:
            try:
                if params is None:
                    bound = self._sig.bind()
                elif isinstance(params, list):
                    bound = self._sig.bind(*params)
                else:
                    bound = self._sig.bind(**params)
            except TypeError as exc:
                raise InvalidParams(str(exc)) from None
            if given:
                # Re-bind against the whole signature, so `remote` and `cancelled` take
                # their own places wherever they stand among positional parameters and **kwargs.
                arguments = {**bound.arguments, **given}
                full = inspect.BoundArguments(
                    self._full, {n: arguments[n] for n in self._full.parameters if n in arguments}
                )
                return full.args, full.kwargs
            args, kwargs = bound.args, bound.kwargs
        if given:
            kwargs = {**kwargs, **given}
        return args, kwargs

    def _arity(self) -> str:
        low, high = len(self._required), len(self._names)
        return str(high) if low == high else f"{low} to {high}"


class Hooks:
    """Registration shared by ``Server`` and ``Client`` in every adapter.

    ``hook_request("name", fn)`` or ``@hook_request("name")`` (or ``@hook_request`` on a
    function, or ``@hook_request(replace=True)``: its name); the same for ``hook_notif``;
    ``@method`` registers a request handler under the function's own name.
    ``hook_connect`` / ``hook_disconnect`` take callbacks receiving the ``Remote``.

    A name has one request handler and one notification handler: registering a second
    one raises ``ValueError`` (a typo or a copied line would otherwise replace the first
    without a word), unless the call says ``replace=True``.
    """

    def __init__(self) -> None:
        self.requests: dict[str, Handler] = {}
        self.notifications: dict[str, Handler] = {}
        self.on_connect: list[Callable[[Any], Any]] = []
        self.on_disconnect: list[Callable[[Any], Any]] = []

    @overload
    def hook_request(self, name: str, fn: F, *, replace: bool = False) -> F: ...
    @overload
    def hook_request(self, name: str, fn: None = None, *, replace: bool = False) -> Callable[[F], F]: ...
    @overload
    def hook_request(self, name: F, fn: None = None, *, replace: bool = False) -> F: ...
    @overload
    def hook_request(self, *, replace: bool = False) -> Callable[[F], F]: ...
    def hook_request(self, name: Any = None, fn: Any = None, *, replace: bool = False) -> Any:
        """Register a request handler (its return value is the result). Raises
        ``ValueError`` if ``name`` has one already, unless ``replace=True``."""
        return self._register(self.requests, "request", name, fn, replace)

    @overload
    def hook_notif(self, name: str, fn: F, *, replace: bool = False) -> F: ...
    @overload
    def hook_notif(self, name: str, fn: None = None, *, replace: bool = False) -> Callable[[F], F]: ...
    @overload
    def hook_notif(self, name: F, fn: None = None, *, replace: bool = False) -> F: ...
    @overload
    def hook_notif(self, *, replace: bool = False) -> Callable[[F], F]: ...
    def hook_notif(self, name: Any = None, fn: Any = None, *, replace: bool = False) -> Any:
        """Register a notification handler (its return value is ignored). Raises
        ``ValueError`` if ``name`` has one already, unless ``replace=True``."""
        return self._register(self.notifications, "notification", name, fn, replace)

    @overload
    def method(self, fn: F, *, replace: bool = False) -> F: ...
    @overload
    def method(self, fn: None = None, *, replace: bool = False) -> Callable[[F], F]: ...
    def method(self, fn: Any = None, *, replace: bool = False) -> Any:
        """Register ``fn`` as a request handler under its own ``__name__`` (``@method``,
        or ``@method(replace=True)``)."""
        if fn is not None and not callable(fn):
            raise TypeError(f"method() takes a function, not {fn!r}")
        return self._register(self.requests, "request", fn, None, replace)

    def hook_connect(self, fn: F) -> F:
        """Call ``fn(remote)`` (sync or async) when a connection opens, before any of its
        requests or notifications is handled. If it raises, the connection is closed."""
        self.on_connect.append(fn)
        return fn

    def hook_disconnect(self, fn: F) -> F:
        """Call ``fn(remote)`` (sync or async) once when a connection has ended."""
        self.on_disconnect.append(fn)
        return fn

    def _register(self, table: dict[str, Handler], kind: str, name: Any, fn: Any, replace: bool) -> Any:
        if name is None and fn is None:  # @hook_request(replace=True): the function's name
            return lambda fn: self._register(table, kind, fn, None, replace)
        if callable(name) and fn is None:  # bare decorator: @hook_request
            fn, name = name, name.__name__
        if not isinstance(name, str) or not name:
            raise TypeError(f"method name must be a non-empty str, not {name!r}")
        if name.startswith("rpc."):
            raise ValueError(f"{name!r}: method names beginning with 'rpc.' are reserved by JSON-RPC")

        def register(fn: Any) -> Any:
            handler = Handler(name, fn)
            old = table.get(name)
            if old is not None and not replace:
                raise ValueError(
                    f"{name!r} already has a {kind} handler ({old.fn!r}); pass replace=True to replace it"
                )
            table[name] = handler
            return fn

        return register if fn is None else register(fn)


def not_found(method: str) -> RemoteError:
    """What a request for a method nobody registered is answered with."""
    shown = method if len(method) <= 60 else method[:57] + "..."  # (the peer's text: a short prefix)
    return RemoteError(ErrorCode.METHOD_NOT_FOUND, f"Method not found: {shown}")


#: Results that are plainly not awaitable: inspect.isawaitable's ABC check costs ~1.5 µs
#: (test ``type(result) in PLAIN_RESULTS`` first).
PLAIN_RESULTS = frozenset((int, str, float, bool, list, dict, type(None)))


def call_handler(handler: Handler, params: Params, remote: object, cancelled: object = None) -> Any:
    """Bind and call; the result may be an awaitable (the async adapter awaits it)."""
    args, kwargs = handler.bind(params, remote, cancelled)
    return handler.fn(*args, **kwargs)
