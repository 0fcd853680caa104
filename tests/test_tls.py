"""`squall up --tls-cert --tls-key` serves HTTPS itself; the CLI talks to it with --cacert; a
non-loopback host without TLS is warned about."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import subprocess
from pathlib import Path

import httpx

from tests.conftest import SQUALL, free_port, wait_for


def self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_serving_and_the_cli(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    data = tmp_path / "data"
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([SQUALL, "up", "--port", str(port), "--data-dir", str(data),
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "SQUALL_S3_PORT": "0"})
    url = f"https://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                ctx = ssl.create_default_context(cafile=str(cert))
                return httpx.get(f"{url}/healthz", verify=ctx, timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, message="the HTTPS listener")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as c:
            assert c.get(f"{url}/api/v1/functions").status_code == 401
        # Plain HTTP on the TLS port gets nowhere.
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
        except httpx.HTTPError:
            plain = 0
        assert plain != 200
        res = subprocess.run([SQUALL, "--url", url, "--cacert", str(cert), "--data-dir",
                              str(data), "ls"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "serving on https://" in (tmp_path / "up.log").read_text()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_non_loopback_without_tls_warns(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([SQUALL, "up", "--host", "0.0.0.0", "--port", str(port),
                             "--data-dir", str(tmp_path / "d")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "SQUALL_S3_PORT": "0"})
    try:
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/healthz"), timeout=30,
                 message="the platform")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "without TLS" in out


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).is_success
    except httpx.HTTPError:
        return False
