"""``ezipc serve --tls-cert`` and ``ezipc call --tls/--cafile/--cert``, with certificates
from trustme; mutual TLS with ``--tls-ca``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ezipc_adapters._cli import main

from .conftest import cli, serving

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client.example")
    paths = {name: str(folder / f"{name}.pem") for name in ("ca", "chain", "key", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(paths["chain"], append=True)
    server_cert.private_key_pem.write_to_path(paths["key"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


def test_tls_call(methods_file: Path, pki: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with serving(str(methods_file), "--listen", "tcp://127.0.0.1:0",
                 "--tls-cert", pki["chain"], "--tls-key", pki["key"]) as server:
        address = server.address("tcp")
        assert main(["call", address, "add", "1", "2", "--cafile", pki["ca"]]) == 0
        assert capsys.readouterr().out == "3\n"
        assert main(["call", address, "greet", "name=tls", "--cafile", pki["ca"],
                     "--framing", "content-length", "--server-hostname", "localhost"]) == 0
        assert capsys.readouterr().out == '"hello, tls"\n'
        # the system's CAs do not know this one: the handshake fails
        assert main(["call", address, "add", "1", "2", "--tls", "--timeout", "5"]) == 4
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
        # plain text to a TLS server: the connection is closed on us
        assert main(["call", address, "add", "1", "2", "--timeout", "5"]) == 4
        proc = cli("call", address, "add", "[5, 5]", "--cafile", pki["ca"])  # as a subprocess too
        assert (proc.returncode, proc.stdout) == (0, "10\n"), proc.stderr


def test_mutual_tls(methods_file: Path, pki: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with serving(str(methods_file), "--listen", "tcp://127.0.0.1:0",
                 "--tls-cert", pki["chain"], "--tls-key", pki["key"], "--tls-ca", pki["ca"]) as server:
        address = server.address("tcp")
        assert main(["call", address, "echo", "x", "--cafile", pki["ca"], "--cert", pki["client"]]) == 0
        assert json.loads(capsys.readouterr().out) == {"args": ["x"], "kwargs": {}}
        # no client certificate: refused
        assert main(["call", address, "echo", "x", "--cafile", pki["ca"], "--timeout", "5"]) == 4
        capsys.readouterr()


def test_tls_usage_errors(pki: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "tcp://127.0.0.1:9", "m", "--key", pki["key"]]) == 2
    assert "--key needs --cert" in capsys.readouterr().err
    assert main(["call", "tcp://127.0.0.1:9", "m", "--cafile", "/nonexistent/ca.pem"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert main(["serve", "x.py", "--tls-key", pki["key"]]) == 2
    assert "--tls-key needs --tls-cert" in capsys.readouterr().err
    assert main(["serve", "x.py", "--tls-cert", "/nonexistent/cert.pem"]) == 2
    assert "cannot load" in capsys.readouterr().err
