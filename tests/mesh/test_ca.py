"""The built-in CA: roots in the catalog, SPIFFE leaves, renewal."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from waypost import ValidationError
from waypost.catalog import connect
from waypost.mesh import ca
from waypost.mesh.leaves import Leaves

from ..helpers import open_catalog

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_leaf_carries_the_spiffe_id_and_is_signed_by_the_root() -> None:
    root = ca.new_root("11111111-2222.consul", NOW)
    leaf = ca.sign_leaf(root, "dc1", "web", NOW, dt.timedelta(hours=72))
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    root_cert = x509.load_pem_x509_certificate(root.root_cert.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/web"] == [leaf.service_uri]
    cert.verify_directly_issued_by(root_cert)  # raises if not signed by the root
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=72)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.serial_number < 2**63  # Consul's clients read it as a uint64


def test_a_leaf_from_another_root_does_not_verify() -> None:
    ours, theirs = ca.new_root("a.consul", NOW), ca.new_root("b.consul", NOW)
    leaf = ca.sign_leaf(theirs, "dc1", "web", NOW, dt.timedelta(hours=1))
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ours.root_cert.encode()))


def test_a_name_that_cannot_be_a_spiffe_path_is_refused() -> None:
    root = ca.new_root("a.consul", NOW)
    with pytest.raises(ValidationError, match="not a service name"):
        ca.sign_leaf(root, "dc1", "a/b", NOW, dt.timedelta(hours=1))


async def test_the_first_root_stays_and_is_shared_through_the_store(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'c.db'}"
    catalog = await open_catalog(url)
    first = await catalog.write(connect.init_ca, ca.new_root("first.consul", NOW))
    again = await catalog.write(connect.init_ca, ca.new_root("second.consul", NOW))
    assert again.id == first.id and again.trust_domain == "first.consul"
    await catalog.close()
    reopened = await open_catalog(url)  # another agent on the same store sees the same root
    root = reopened.state.active_root()
    assert root is not None and root.id == first.id and root.private_key == first.private_key
    assert len(reopened.state.roots()) == 1
    await reopened.close()


async def test_leaves_are_renewed_before_they_expire_and_say_so() -> None:
    catalog = await open_catalog()
    leaves = Leaves(catalog, "dc1", ttl=0.5)
    await leaves.start()
    renewed: list[int] = []
    leaves.subscribe(lambda: renewed.append(leaves.index))
    first, index = leaves.leaf("web")
    assert leaves.leaf("web") == (first, index)  # cached, not signed again
    second, later = await leaves.wait("web", index, timeout=5)
    assert later > index and second.serial_number != first.serial_number
    assert renewed, "the xDS server was not told of the renewal"
    key = x509.load_pem_x509_certificate(second.cert_pem.encode()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    leaves.stop()
    await catalog.close()


async def test_a_blocking_leaf_wait_times_out_with_the_same_leaf() -> None:
    catalog = await open_catalog()
    leaves = Leaves(catalog, "dc1", ttl=3600)
    await leaves.start()
    leaf, index = leaves.leaf("db")
    started = asyncio.get_running_loop().time()
    assert await leaves.wait("db", index, timeout=0.2) == (leaf, index)
    assert asyncio.get_running_loop().time() - started >= 0.19
    leaves.stop()
    await catalog.close()


async def test_two_agents_starting_at_once_agree_on_one_root(tmp_path: Path) -> None:
    """Both plans read "no root" on the same state (the store yields before each
    commit); the roots' range condition makes the second re-plan and adopt the first."""
    from waypost.catalog import Catalog
    from waypost.storage import open_storage

    from ..catalog.test_writes import Yielding

    catalog = Catalog(Yielding(open_storage(f"sqlite:///{tmp_path}/c.db")))
    await catalog.open()
    first, second = await asyncio.gather(
        catalog.write(connect.init_ca, ca.new_root("one.consul", NOW)),
        catalog.write(connect.init_ca, ca.new_root("two.consul", NOW)),
    )
    assert first.id == second.id and len(catalog.state.roots()) == 1
    assert catalog.conflicts == 1
    await catalog.close()
