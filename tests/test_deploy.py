"""Deployment material: the CA / server certificate and node keys (the live TLS federation test is
in test_deployment.py)."""

import ipaddress
import stat

import pytest
from cryptography import x509

from fedtune.cli import main
from fedtune.coordinator.certs import CertError, create_certificates


def test_certs_make_a_ca_and_a_server_certificate_valid_for_every_host(tmp_path):
    paths = create_certificates(tmp_path, ["localhost", "127.0.0.1", "coordinator.example.org"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not signed by the CA
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "coordinator.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_certs_never_overwrite_and_reject_bad_hosts_without_writing(tmp_path, capsys):
    paths = create_certificates(tmp_path / "a", ["127.0.0.1"])
    before = paths.ca_key.read_bytes()
    assert main(["certs", "--out", str(tmp_path / "a"), "--host", "127.0.0.1"]) == 2
    assert "already exist" in capsys.readouterr().err and paths.ca_key.read_bytes() == before
    with pytest.raises(CertError, match="neither an IP address nor a host name"):
        create_certificates(tmp_path / "b", ["bad host"])
    assert not (tmp_path / "b").exists()
    assert main(["certs", "--out", str(tmp_path / "a"), "--host", "127.0.0.1", "--force"]) == 0
    assert paths.ca_key.read_bytes() != before
