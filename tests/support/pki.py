"""A private CA and the certificates it signs, made by the openssl command line for one test session:
a provider's server certificate (for `provider.test` and 127.0.0.1) and the router's client certificate
(mutual TLS). Nothing here is trusted by the system: only what a test points at the CA trusts it."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROVIDER_HOST = "provider.test"  # a name no resolver knows: only a proxy told so reaches it


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _leaf(folder: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    key, request, cert, ext = (folder / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
    ext.write_text(extensions + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(request), "-subj", subject)
    _openssl("x509", "-req", "-in", str(request), "-CA", str(folder / "ca.pem"), "-CAkey", str(folder / "ca.key"),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return cert, key


def make_pki(folder: Path) -> Pki:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"), "-days", "2",
             "-subj", "/CN=llm-router test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    server_cert, server_key = _leaf(folder, "server", f"/CN={PROVIDER_HOST}",
                                    f"subjectAltName=DNS:{PROVIDER_HOST},IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    client_cert, client_key = _leaf(folder, "client", "/CN=llm-router", "extendedKeyUsage=clientAuth")
    return Pki(folder / "ca.pem", server_cert, server_key, client_cert, client_key)
