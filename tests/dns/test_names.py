"""Every name form and record type, against a real agent, through dnspython and dig."""

from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from ..agentproc import AgentProcess
from .conftest import answers, dig, instance, query, register


@pytest.fixture
def web(agent: AgentProcess, svc: str) -> str:
    """Three instances: two with their own IPv4 address and tag, one on the node's address."""
    register(agent, instance(svc, 1, "10.0.0.1", Tags=["primary", "Blue"]))
    register(agent, instance(svc, 2, "10.0.0.2", Tags=["secondary"]))
    register(agent, instance(svc, 3))  # no address: the node's (127.0.0.1)
    return svc


def test_a_records_of_a_service(agent: AgentProcess, web: str) -> None:
    msg = query(agent, f"{web}.service.consul")
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA
    assert sorted(answers(msg, "A")) == ["10.0.0.1", "10.0.0.2", "127.0.0.1"]
    assert all(rrset.ttl == 0 for rrset in msg.answer)


@pytest.mark.parametrize(
    "form",
    [
        "{svc}.service.consul",
        "{svc}.service.dc1.consul",
        "{SVC}.SERVICE.Consul",
        "_{svc}._tcp.service.consul",
        "_{svc}._tcp.service.dc1.consul",
    ],
)
def test_every_service_form_names_the_same_instances(
    agent: AgentProcess, web: str, form: str
) -> None:
    name = form.format(svc=web, SVC=web.upper())
    assert sorted(answers(query(agent, name), "A")) == ["10.0.0.1", "10.0.0.2", "127.0.0.1"]


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("primary.{svc}.service.consul", ["10.0.0.1"]),
        ("blue.{svc}.service.consul", ["10.0.0.1"]),  # tags match case-insensitively
        ("_{svc}._secondary.service.consul", ["10.0.0.2"]),
        ("secondary.{svc}.service.dc1.consul", ["10.0.0.2"]),
    ],
)
def test_tag_filters(agent: AgentProcess, web: str, form: str, expected: list[str]) -> None:
    assert answers(query(agent, form.format(svc=web)), "A") == expected


def test_srv_targets_and_additional_addresses(agent: AgentProcess, web: str) -> None:
    msg = query(agent, f"_{web}._tcp.service.consul", "SRV")
    srv = sorted(answers(msg, "SRV"))
    assert srv == [
        "1 1 8001 0a000001.addr.dc1.consul.",
        "1 1 8002 0a000002.addr.dc1.consul.",
        "1 1 8003 test-node.node.dc1.consul.",
    ]
    glue = {rrset.name.to_text(): [rd.to_text() for rd in rrset] for rrset in msg.additional}
    assert glue["0a000001.addr.dc1.consul."] == ["10.0.0.1"]
    assert glue["test-node.node.dc1.consul."] == ["127.0.0.1"]


def test_srv_weights_follow_the_instance_weights(agent: AgentProcess, svc: str) -> None:
    register(agent, instance(svc, 1, "10.0.1.1", Weights={"Passing": 7, "Warning": 2}))
    assert answers(query(agent, f"{svc}.service.consul", "SRV"), "SRV") == [
        "1 7 8001 0a000101.addr.dc1.consul."
    ]


def test_aaaa_for_ipv6_instances_and_nodata_for_the_missing_family(
    agent: AgentProcess, svc: str
) -> None:
    register(agent, instance(svc, 1, "2001:db8::1"))
    assert answers(query(agent, f"{svc}.service.consul", "AAAA"), "AAAA") == ["2001:db8::1"]
    nodata = query(agent, f"{svc}.service.consul", "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    srv = answers(query(agent, f"_{svc}._tcp.service.consul", "SRV"), "SRV")
    assert srv == [f"1 1 8001 {'20010db8' + '0' * 23 + '1'}.addr.dc1.consul."]


def test_any_answers_every_type_that_exists(agent: AgentProcess, web: str) -> None:
    msg = query(agent, f"{web}.service.consul", "ANY", tcp=True)
    types = {dns.rdatatype.to_text(rrset.rdtype) for rrset in msg.answer}
    assert types == {"A", "SRV"}


def test_node_lookup_with_txt_metadata(agent: AgentProcess) -> None:
    msg = query(agent, "test-node.node.consul")
    assert answers(msg, "A") == ["127.0.0.1"]
    assert answers(query(agent, "TEST-NODE.node.dc1.consul"), "A") == ["127.0.0.1"]
    txt = query(agent, "test-node.node.consul", "TXT")
    assert txt.rcode() == dns.rcode.NOERROR  # TXT rows are the node's meta; may be none
    if not txt.answer:
        assert txt.authority[0].rdtype == dns.rdatatype.SOA


def test_addr_lookups(agent: AgentProcess) -> None:
    assert answers(query(agent, "0a000001.addr.consul"), "A") == ["10.0.0.1"]
    assert answers(query(agent, "7f000001.addr.dc1.consul"), "A") == ["127.0.0.1"]
    v6 = "20010db8" + "0" * 23 + "1"
    assert answers(query(agent, f"{v6}.addr.consul", "AAAA"), "AAAA") == ["2001:db8::1"]
    assert query(agent, "zz.addr.consul").rcode() == dns.rcode.NXDOMAIN


def test_apex_soa_and_ns(agent: AgentProcess) -> None:
    soa = query(agent, "consul", "SOA").answer[0][0]
    assert (soa.mname.to_text(), soa.rname.to_text()) == ("ns.consul.", "hostmaster.consul.")
    assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (3600, 600, 86400, 0)
    ns = query(agent, "consul", "NS")
    assert answers(ns, "NS") == ["ns.consul."]
    assert [rd.to_text() for rd in ns.additional[0]] == ["127.0.0.1"]
    assert answers(query(agent, "ns.consul"), "A") == ["127.0.0.1"]
    assert {dns.rdatatype.to_text(r.rdtype) for r in query(agent, "consul", "ANY").answer} == {
        "SOA",
        "NS",
    }


def test_dig_sees_the_same_answers(agent: AgentProcess, web: str) -> None:
    out = dig(agent, f"_{web}._tcp.service.consul", "SRV", "+noall", "+answer", "+additional")
    assert "8001 0a000001.addr.dc1.consul." in out
    assert "0a000001.addr.dc1.consul. 0\tIN\tA\t10.0.0.1" in out
    short = dig(agent, f"primary.{web}.service.consul", "+short")
    assert short.split() == ["10.0.0.1"]
    status = dig(agent, "test-node.node.consul", "+noall", "+comments")
    assert "status: NOERROR" in status and " aa" in status


def test_tuned_agent_alt_domain_dc_and_ttls(tuned_agent: AgentProcess) -> None:
    register(tuned_agent, instance("ttlsvc", 1, "10.9.0.1"))
    register(tuned_agent, instance("other", 1, "10.9.0.2"))
    for name in ("ttlsvc.service.consul", "ttlsvc.service.east.waypost", "TTLSVC.service.Waypost."):
        msg = query(tuned_agent, name)
        assert answers(msg, "A") == ["10.9.0.1"], name
        assert msg.answer[0].ttl == 7
    assert query(tuned_agent, "other.service.consul").answer[0].ttl == 3  # the * wildcard
    srv = query(tuned_agent, "_other._tcp.service.waypost", "SRV")
    assert answers(srv, "SRV") == ["1 1 8001 0a090002.addr.east.waypost."]
    assert query(tuned_agent, "tuned.node.waypost").answer[0].ttl == 11
    # another datacenter's name: we federate with none
    assert query(tuned_agent, "ttlsvc.service.dc1.consul").rcode() == dns.rcode.NXDOMAIN
    soa = query(tuned_agent, "waypost", "SOA").answer[0][0]
    assert soa.mname.to_text() == "ns.waypost."


def test_reverse_lookups_of_known_addresses(agent: AgentProcess, web: str) -> None:
    ptr = answers(
        query(agent, "1.0.0.10.in-addr.arpa", "PTR", tcp=True), "PTR"
    )  # many tests use it
    assert f"{web}.service.dc1.consul." in ptr
    node = answers(query(agent, "1.0.0.127.in-addr.arpa", "PTR"), "PTR")
    assert "test-node.node.dc1.consul." in node
    assert f"{web}.service.dc1.consul." in dig(agent, "-x", "10.0.0.1", "+short").split()
    unknown = query(agent, "1.2.0.192.in-addr.arpa", "PTR")  # not ours, and no recursor
    assert unknown.rcode() == dns.rcode.REFUSED
