"""Certificates for a throwaway control plane: one CA, the API server's serving certificate,
an admin client certificate in ``system:masters``, and the service-account signing key.

Plus the aggregation layer's own pair, as ``hack/local-up-cluster.sh`` makes it: a front-proxy
CA (``--requestheader-client-ca-file``) and the client certificate the API server presents when
it proxies a request to an extension API server such as KEDA's metrics adapter
(``--proxy-client-cert-file``, CN :data:`FRONT_PROXY_CLIENT`). The extension server trusts the
``X-Remote-User`` headers only from a caller with that certificate, so without it every proxied
request reaches the adapter anonymous and the ``external.metrics.k8s.io`` APIService flaps.
A CA of its own, not the cluster's: a client certificate from the main CA must not be able to
claim any user through those headers.

Everything is written as PEM into one folder; nothing here is meant to outlive the control plane.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["FRONT_PROXY_CLIENT", "Pki", "write_pki"]

FRONT_PROXY_CLIENT = "system:auth-proxy"  # --requestheader-allowed-names


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public: Path
    sa_private: Path
    front_proxy_ca: Path
    front_proxy_client_cert: Path
    front_proxy_client_key: Path


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(folder: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """``extra_ips``: addresses the API server is also reached at (a node's, for its pods)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("aijobs-local-ca")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _issue(
        _name("kube-apiserver"),
        serving_key,
        ca_name,
        ca_key,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=[
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
        ],
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(
        _name("aijobs-admin", "system:masters"),
        admin_key,
        ca_name,
        ca_key,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    proxy_ca_key = ec.generate_private_key(ec.SECP256R1())
    proxy_ca_name = _name("aijobs-local-front-proxy-ca")
    proxy_ca = _issue(proxy_ca_name, proxy_ca_key, proxy_ca_name, proxy_ca_key, ca=True)
    proxy_client_key = ec.generate_private_key(ec.SECP256R1())
    proxy_client = _issue(
        _name(FRONT_PROXY_CLIENT),
        proxy_client_key,
        proxy_ca_name,
        proxy_ca_key,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )

    pki = Pki(
        ca_cert=folder / "ca.crt",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        admin_cert=folder / "admin.crt",
        admin_key=folder / "admin.key",
        sa_public=folder / "sa.pub",
        sa_private=folder / "sa.key",
        front_proxy_ca=folder / "front-proxy-ca.crt",
        front_proxy_client_cert=folder / "front-proxy-client.crt",
        front_proxy_client_key=folder / "front-proxy-client.key",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.serving_cert.write_bytes(serving.public_bytes(pem))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.admin_cert.write_bytes(admin.public_bytes(pem))
    pki.admin_key.write_bytes(_pem_key(admin_key))
    pki.sa_private.write_bytes(_pem_key(sa_key))
    pki.sa_public.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    pki.front_proxy_ca.write_bytes(proxy_ca.public_bytes(pem))
    pki.front_proxy_client_cert.write_bytes(proxy_client.public_bytes(pem))
    pki.front_proxy_client_key.write_bytes(_pem_key(proxy_client_key))
    for key_file in (pki.serving_key, pki.admin_key, pki.sa_private, pki.front_proxy_client_key):
        key_file.chmod(0o600)
    return pki
