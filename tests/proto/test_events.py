"""Events are values: frozen, slotted, validated when built."""

from __future__ import annotations

import dataclasses

import pytest

import ezipc_proto
from ezipc_proto import (
    NEED_DATA,
    Cancel,
    Closed,
    Error,
    ErrorCode,
    InvalidMessage,
    LocalProtocolError,
    NeedData,
    Notification,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)
from ezipc_proto._events import _error, _notification, _request, _response

BAD_IDS = [True, False, [1], {"a": 1}, b"1", object()]
GOOD_IDS = [0, -1, 2**70, "", "abc", 1.5, None]


def test_public_names() -> None:
    for name in (
        "Connection", "Request", "Notification", "Response", "Error", "NEED_DATA", "ErrorCode",
        "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
    ):
        assert name in ezipc_proto.__all__
        assert hasattr(ezipc_proto, name)
    for name in ezipc_proto.__all__:
        assert hasattr(ezipc_proto, name), name


def test_error_codes_are_the_specs() -> None:
    assert ErrorCode.PARSE_ERROR == -32700
    assert ErrorCode.INVALID_REQUEST == -32600
    assert ErrorCode.METHOD_NOT_FOUND == -32601
    assert ErrorCode.INVALID_PARAMS == -32602
    assert ErrorCode.INTERNAL_ERROR == -32603
    assert ErrorCode.REQUEST_CANCELLED == -32800
    assert isinstance(ErrorCode.PARSE_ERROR, int)
    # ezipc's own codes stay inside the implementation-defined range
    for code in (ErrorCode.SERVER_ERROR, ErrorCode.MESSAGE_TOO_LARGE, ErrorCode.BATCH_TOO_LARGE):
        assert -32099 <= code <= -32000


def test_exceptions() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert LocalProtocolError("x").error_code == ErrorCode.INTERNAL_ERROR
    assert RemoteProtocolError("x").error_code == ErrorCode.PARSE_ERROR
    assert RemoteProtocolError("x", ErrorCode.MESSAGE_TOO_LARGE).error_code == -32007
    assert str(LocalProtocolError("boom")) == "boom"


@pytest.mark.parametrize("id", GOOD_IDS)
def test_good_ids(id: object) -> None:
    assert Request("m", None, id).id == id  # type: ignore[arg-type]
    assert Response(id, 1).id == id  # type: ignore[arg-type]
    assert Error(id, -1, "x").id == id  # type: ignore[arg-type]
    assert Cancel(id).id == id  # type: ignore[arg-type]


@pytest.mark.parametrize("id", BAD_IDS)
def test_bad_ids(id: object) -> None:
    for build in (
        lambda: Request("m", None, id),
        lambda: Response(id, 1),
        lambda: Error(id, -1, "x"),
        lambda: Cancel(id),
    ):
        with pytest.raises(LocalProtocolError, match="id"):
            build()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("method", [None, 1, b"m", ["m"]])
def test_method_must_be_str(method: object) -> None:
    with pytest.raises(LocalProtocolError, match="method"):
        Request(method, None, 1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="method"):
        Notification(method)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", ["bar", 1, 1.5, True, (1, 2), b"[]"])
def test_params_list_dict_or_absent(params: object) -> None:
    with pytest.raises(LocalProtocolError, match="params"):
        Request("m", params, 1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="params"):
        Notification("m", params)  # type: ignore[arg-type]


def test_params_ok() -> None:
    assert Request("m", [1], 1).params == [1]
    assert Request("m", {"a": 1}, 1).params == {"a": 1}
    assert Notification("m").params is None
    assert Request("m").id is None  # a default; sending it is refused (see test_connection)


def test_response_result_may_be_null() -> None:
    assert Response(1).result is None
    assert Response(1, None) == Response(1)


@pytest.mark.parametrize("code", [True, "1", 1.0, None])
def test_error_code_must_be_int(code: object) -> None:
    with pytest.raises(LocalProtocolError, match="code"):
        Error(1, code, "x")  # type: ignore[arg-type]


def test_error_codes_print_as_numbers() -> None:
    """An ErrorCode given to an event or an exception is kept as a plain int, so "%s" and
    f-strings show -32603 on every Python (3.10's IntEnum.__str__ gives the member name)."""
    error = Error(1, ErrorCode.INTERNAL_ERROR, "Internal error")
    assert type(error.code) is int and error.code == ErrorCode.INTERNAL_ERROR == -32603
    logged = "answered with error %s: %s" % (error.code, error.message)  # noqa: UP031  (as logging formats)
    assert logged == "answered with error -32603: Internal error"
    assert f"{error.code}" == "-32603"
    assert repr(error) == "Error(id=1, code=-32603, message='Internal error', data=None)"
    assert error == Error(1, -32603, "Internal error")
    for exc in (ProtocolError("x"), LocalProtocolError("x", ErrorCode.INVALID_REQUEST), RemoteProtocolError("x")):
        assert type(exc.error_code) is int
        assert "%s" % exc.error_code == str(int(exc.error_code))  # noqa: UP031  (as logging formats)
    assert type(Error(1, 7, "x").code) is int
    fast = _error(1, ErrorCode.UNAUTHORIZED, "Unauthorized", None)  # the private fast path too
    assert type(fast.code) is int and fast == Error(1, -32030, "Unauthorized")


def test_invalid_messages_carry_plain_int_codes() -> None:
    from ezipc_proto import NEED_DATA, Connection

    conn = Connection()
    conn.receive_data(b'{"jsonrpc": "2.0", "method": 1, "id": 1}\nnot json\n')
    events = [conn.next_event(), conn.next_event()]
    assert conn.next_event() is NEED_DATA
    assert [type(ev.error.code) for ev in events] == [int, int]  # type: ignore[union-attr]
    assert [ev.error.code for ev in events] == [-32600, -32700]  # type: ignore[union-attr]


def test_error_message_must_be_str() -> None:
    with pytest.raises(LocalProtocolError, match="message"):
        Error(1, -1, None)  # type: ignore[arg-type]
    assert Error(1, ErrorCode.INTERNAL_ERROR, "x", {"any": [1]}).data == {"any": [1]}


@pytest.mark.parametrize(
    "event",
    [Request("m", [1], 1), Notification("m"), Response(1, 2), Error(1, 2, "x"), Cancel(1),
     InvalidMessage(Error(None, -32700, "x")), Closed()],
)
def test_frozen_and_slotted(event: object) -> None:
    assert not hasattr(event, "__dict__")
    field = dataclasses.fields(event)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, 5)
    with pytest.raises((AttributeError, TypeError)):
        event.extra = 1  # type: ignore[attr-defined]


def test_defaults() -> None:
    assert InvalidMessage(Error(None, 1, "x")).reply == b""
    assert Closed().unfinished == b""
    assert Closed() == Closed(b"")
    assert Notification("a") != Request("a", None, None)


def test_need_data_sentinel() -> None:
    assert NEED_DATA is NeedData.NEED_DATA
    assert repr(NEED_DATA) == str(NEED_DATA) == "NEED_DATA"
    assert isinstance(NEED_DATA, NeedData)


def test_private_constructors_equal_public_ones() -> None:
    assert _request("m", [1], "x") == Request("m", [1], "x")
    assert type(_request("m", None, 1)) is Request
    assert _notification("m", {"a": 1}) == Notification("m", {"a": 1})
    assert _response(2, None) == Response(2)
    assert _error(None, -32600, "x", [1]) == Error(None, -32600, "x", [1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        _request("m", None, 1).id = 2  # type: ignore[misc]
