"""The built-in certificate authority: one root for the cluster, SPIFFE leaves.

The root (an EC P-256 key and a self-signed certificate whose URI SAN is the
trust domain, `spiffe://<cluster-uuid>.consul`) is a catalog record written
through the one write path (`catalog/connect.init_ca`), so every agent on an
etcd store signs with the same root and every Envoy trusts the same bundle.
Leaf certificates are not stored: any agent can sign one, as Consul's agents
do; they carry `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>` as
their only URI SAN and live for a short time (72 h by default).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._exceptions import ValidationError
from ..catalog.model import CARoot

ROOT_LIFETIME = dt.timedelta(days=3650)
BACKDATE = dt.timedelta(minutes=1)  # a peer whose clock is a little behind still accepts it


class Leaf(msgspec.Struct, frozen=True):
    """A signed leaf certificate and its key, PEM encoded."""

    service: str
    service_uri: str
    serial_number: str
    cert_pem: str
    private_key_pem: str
    valid_after: dt.datetime
    valid_before: dt.datetime
    root_id: str


def new_trust_domain() -> str:
    return f"{uuid.uuid4()}.consul"


def spiffe_id(trust_domain: str, datacenter: str, service: str) -> str:
    return f"spiffe://{trust_domain}/ns/default/dc/{datacenter}/svc/{service}"


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def colon_hex(data: bytes) -> str:
    """Consul's spelling of key IDs and serials: `ab:cd:...`."""
    return ":".join(f"{b:02x}" for b in data)


def new_root(trust_domain: str, now: dt.datetime) -> CARoot:
    """A fresh self-signed root for `trust_domain`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Waypost CA Primary Cert")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    serial = secrets.randbits(62) | 1 << 62  # Consul shows a root's serial as a uint64
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_id = colon_hex(ski.digest)
    return CARoot(
        id=key_id,
        name="Waypost CA Primary Cert",
        serial_number=serial,
        signing_key_id=key_id,
        trust_domain=trust_domain,
        not_before=rfc3339(cert.not_valid_before_utc),
        not_after=rfc3339(cert.not_valid_after_utc),
        root_cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def sign_leaf(
    root: CARoot, datacenter: str, service: str, now: dt.datetime, ttl: dt.timedelta
) -> Leaf:
    """A leaf for `service`, signed by `root`, valid for `ttl` from `now`.

    Raises:
        ValidationError: the service name cannot be part of a SPIFFE ID.
    """
    # A URI SAN takes ASCII only (cryptography refuses the rest with a ValueError:
    # a 500 found by tests/api/test_fuzz.py), and no separators or spaces.
    if not service or not service.isascii() or any(c in service for c in "/ \t\r\n#?"):
        raise ValidationError(f'"{service}" is not a service name a certificate can carry')
    ca_key = serialization.load_pem_private_key(root.private_key.encode(), password=None)
    ca_cert = x509.load_pem_x509_certificate(root.root_cert.encode())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    uri = spiffe_id(root.trust_domain, datacenter, service)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Leaf(
        service=service,
        service_uri=uri,
        serial_number=colon_hex(serial.to_bytes((serial.bit_length() + 7) // 8, "big")),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        valid_after=now - BACKDATE,
        valid_before=now + ttl,
        root_id=root.id,
    )


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
