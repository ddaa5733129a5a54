"""PII detection: validity rules (Luhn, SSN, IBAN, phone, IP), per-kind modes, per-tool allowlists, config errors."""

from __future__ import annotations

import pytest

from mcpward.gateway.config import ConfigError, parse
from mcpward.guards import output, pii
from mcpward.guards.redactor import Profile, Redactor, encode

PII = Profile("test-pii", frozenset({"pii"}))


def kinds(text: str, regions: tuple[str, ...] = ("US",)) -> list[tuple[str, str]]:
    redactor = output.redactor_for(parse({})) if regions == ("US",) else Redactor(pii.detectors(regions))
    data = encode(text)
    return [(h.detector.category, data[h.start:h.end].decode()) for h in redactor.scan(data, PII)]


def test_cards_need_a_brand_a_luhn_checksum_and_one_separator() -> None:
    assert pii.luhn("4111111111111111") and not pii.luhn("4111111111111112")
    assert kinds("pay 4111 1111 1111 1111 now") == [("card", "4111 1111 1111 1111")]
    assert kinds("4012-8888-8888-1881 and 371449635398431") == [("card", "4012-8888-8888-1881"),
                                                                ("card", "371449635398431")]
    for text in ("4012-8888-8888-1882", "4111 1111-1111 1111", "1111111111111117", "ratio 12.340999603271484",
                 "ts 1700000000000"):
        assert [k for k, _ in kinds(text) if k == "card"] == [], text


def test_ssn_validity_rules() -> None:
    assert kinds("ssn 078-05-1123") == [("ssn", "078-05-1123")]
    assert kinds("SSN: 078051123") == [("ssn", "078051123")]  # unformatted only after a label
    for bad in ("000-12-3456", "666-12-3456", "912-12-3456", "078-00-1123", "078-05-0000", "078-05-1120",
                "078.05-1123", "078051123", "111-11-1111"):
        assert [k for k, _ in kinds(bad) if k == "ssn"] == [], bad


def test_iban_needs_a_valid_mod97_checksum() -> None:
    assert kinds("IBAN DE89 3704 0044 0532 0130 00.") == [("iban", "DE89 3704 0044 0532 0130 00")]
    assert kinds("GB82WEST12345698765432") == [("iban", "GB82WEST12345698765432")]
    assert kinds("DE88 3704 0044 0532 0130 00") == []
    assert not pii.valid_iban("XX00 1234 5678")


def test_email() -> None:
    assert kinds("write to jane.doe+x@mail.example.co.uk.") == [("email", "jane.doe+x@mail.example.co.uk")]
    assert kinds("user@xn--80ak6aa92e.com") == [("email", "user@xn--80ak6aa92e.com")]
    assert kinds("logo@2x.png .bad.@example.com") == []


def test_phone_numbers_are_validated_for_their_region() -> None:
    assert kinds("call (415) 555-0132 or +44 20 7123 4567") == [("phone", "(415) 555-0132"),
                                                                ("phone", "+44 20 7123 4567")]
    assert kinds("US: 415-555-0132") == [("phone", "415-555-0132")]
    assert kinds("090-1234-5678") == []  # a Japanese number, not valid in the default region
    assert kinds("090-1234-5678", ("US", "JP")) == [("phone", "090-1234-5678")]
    assert kinds("+0000 tz, 010-82544588, 2024-01-15, 123-456-7890") == []


def test_ip_addresses() -> None:
    found = kinds("from 203.0.113.7 and 10.0.0.1, fe80::1, ::ffff:192.0.2.1, 2001:db8:0:0:0:0:0:1 done")
    assert found == [("ip", "203.0.113.7"), ("ip", "10.0.0.1"), ("ip", "fe80::1"), ("ip", "::ffff:192.0.2.1"),
                     ("ip", "2001:db8:0:0:0:0:0:1")]
    for text in ("version 1.2.3.4.5", "256.1.1.1", "1.2.3.04", "std::cout", "12:34:56", "aa:bb:cc:dd:ee:ff",
                 "text192.168.1.1", "fe80::1text", "use ::", "::ffff:256.0.0.1"):
        assert kinds(text) == [], text


def test_pii_settings_and_defaults() -> None:
    got = pii.settings(parse({}))
    assert got.modes == {"card": "redact", "ssn": "redact", "iban": "redact", "email": "log", "phone": "log",
                         "ip": "log"}
    got = pii.settings(parse({"guards": {"pii": {"email": "redact", "ip": "off", "phone_regions": ["GB"]}}}))
    assert got.modes["email"] == "redact" and got.modes["ip"] == "off" and got.phone_regions == ("GB",)
    for table, problem in [({"card": "hide"}, "must be one of"), ({"phone_regions": ["ZZ"]}, "not a region"),
                           ({"ssn_mode": "x"}, "unknown key")]:
        with pytest.raises(ConfigError, match=problem):
            pii.settings(parse({"guards": {"pii": table}}))
    bad_tool = {"servers": {"s": {"command": "x", "tools": {"t": {"allow_pii": ["fingerprint"]}}}}}
    with pytest.raises(ConfigError, match="unknown PII kind"):
        pii.settings(parse(bad_tool))


def test_a_number_labelled_with_its_country_is_validated_there() -> None:
    # National numbers without a country code: the words before the label say whose number it is.
    assert kinds("Reach me on my Japanese mobile number: 080-3456-7890.") == [("phone", "080-3456-7890")]
    assert kinds("Israeli phone 03-6123456 (office)") == [("phone", "03-6123456")]
    assert kinds("her CN number is 13912345678") == [("phone", "13912345678")]
    assert kinds("German tel. 030 1234567") == [("phone", "030 1234567")]
    found = output.redactor_for(parse({})).scan(encode("DE number 030 1234567"), PII)
    assert [h.detector.id for h in found] == ["pii-phone-country"]
    for text in ("my order number is 13912345678",  # not a country
                 "my number is 13912345678",  # no country at all: a bare digit run stays unreported
                 "in number 0612345678",  # two-letter codes count only in upper case
                 "French number 0301 2345",  # too short for a French number
                 "Japanese number 12",  # too short for a phone number
                 "UK ticket number 020 7946 0018"):  # the nearest word before the label is "ticket"
        assert kinds(text) == [], text


def test_the_unspecified_address_only_after_an_address_label() -> None:
    assert kinds("bind = :: port 8080") == [("ip", "::")]
    assert kinds("default route via ipv6 ::\n") == [("ip", "::")]
    assert kinds("src=:: dst=fe80::1") == [("ip", "::"), ("ip", "fe80::1")]
    assert kinds("listening IPv6 ::") == [("ip", "::")]
    found = output.redactor_for(parse({})).scan(encode("addr: ::"), PII)
    assert [h.detector.id for h in found] == ["pii-ip-unspecified"]
    for text in ("use ::", "boost::asio::ip::tcp::socket", "host :: String", "ip::", "Address ::Foo",
                 "see the ip :: section", "x :: y"):
        assert [k for k, _ in kinds(text) if k == "ip"] == [], text
