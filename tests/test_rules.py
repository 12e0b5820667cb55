"""The audit rules, one verdict at a time: these read as the rule table in the README."""

import pytest

from bot.rules import (
    EXEMPT,
    OK,
    UNKNOWN,
    WARNING,
    decode,
    describe,
    fix_problem,
    fixed_flags,
    judge,
    parse_flags,
    reason_text,
    require_tls_flags,
)

VS, RC = "smtp_virtual_server", "receive_connector"


@pytest.mark.parametrize(
    ("flags", "verdict", "basic"),
    [(1, OK, False), (3, WARNING, True), (5, OK, False), (6, WARNING, True), (7, WARNING, True)],
)
def test_smtp_virtual_server_basic_is_bit_2(flags, verdict, basic):
    result = judge(VS, [str(flags)])
    assert (result.verdict, result.basic_auth, result.flags) == (verdict, basic, flags)


def test_smtp_virtual_server_never_guesses_tls():
    result = judge(VS, ["7"])
    assert result.tls_required is None
    assert "not recorded" in result.reason
    assert result.severity == "high"


def test_receive_connector_basic_without_tls_is_the_severe_case():
    result = judge(RC, ["5"])  # Tls + BasicAuth, no BasicAuthRequireTLS
    assert (result.verdict, result.basic_auth, result.tls_required) == (WARNING, True, False)
    assert result.severity == "high"
    assert "clear text" in result.reason and "severe" in result.reason


def test_receive_connector_basic_with_tls_required_is_a_milder_warning():
    result = judge(RC, ["31"])
    assert (result.verdict, result.tls_required, result.severity) == (WARNING, True, "medium")


@pytest.mark.parametrize("flags", [0, 1, 2, 3, 16, 17, 35])
def test_receive_connector_without_basic_is_ok(flags):
    assert judge(RC, [str(flags)]).verdict == OK


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (None, "is not set"),
        ([], "is not set"),
        ([""], "is empty"),
        (["  "], "is empty"),
        (["seven"], "not an integer"),
        (["7", "3"], "has 2 values"),
        (["-1"], "negative"),
        ([b"7x"], "not an integer"),
    ],
)
def test_unreadable_flags_are_unknown_never_ok(values, problem):
    result = judge(VS, values)
    assert result.verdict == UNKNOWN
    assert problem in result.reason
    assert "msExchAuthenticationFlags" in result.reason


def test_raw_bytes_and_ints_are_read():
    assert parse_flags("a", [b"6"]) == (6, None)
    assert parse_flags("a", [6]) == (6, None)


@pytest.mark.parametrize("reason", ["sbs", "configured"])
def test_exempt_servers_are_exempt_with_the_reason(reason):
    result = judge(VS, ["7"], exempt_reason=reason)
    assert result.verdict == EXEMPT and result.basic_auth is True
    assert result.reason == reason  # the reason is the code itself, as the contract says
    assert ("Small Business" if reason == "sbs" else "AUTHGUARD_EXEMPT_SERVERS") in reason_text(
        result.verdict, result.reason
    )


def test_exempt_server_with_unreadable_flags_is_still_unknown():
    assert judge(VS, [], exempt_reason="sbs").verdict == UNKNOWN


def test_flags_decode_to_words():
    assert decode(VS, 7) == ["Anonymous", "Basic", "Integrated Windows"]
    assert decode(RC, 31) == [
        "Tls",
        "Integrated",
        "BasicAuth",
        "BasicAuthRequireTLS",
        "ExchangeServer",
    ]
    assert decode(VS, 64 + 2) == ["Basic", "other bits 64"]
    assert describe(VS, None) == "not set"
    assert describe(RC, 0) == "0 (none)"


def test_fix_clears_basic_and_keeps_the_rest():
    assert fixed_flags(VS, 7) == 5
    assert fixed_flags(RC, 31) == 19  # BasicAuth and BasicAuthRequireTLS cleared
    assert fix_problem(VS, 7) is None


def test_fix_that_leaves_no_method_needs_a_person():
    assert "only authentication method" in fix_problem(VS, 2)
    assert "only authentication method" in fix_problem(RC, 4)
    assert "already off" in fix_problem(VS, 5)


def test_require_tls_only_where_the_connector_has_tls():
    assert require_tls_flags(RC, 5) == 13
    assert require_tls_flags(RC, 4) is None  # no Tls bit: BasicAuthRequireTLS needs it
    assert require_tls_flags(RC, 13) is None  # already required
    assert require_tls_flags(VS, 7) is None  # not recorded on virtual servers


def test_judging_the_same_text_twice_gives_the_same_answer_and_other_types_are_not_confused():
    """Text values from the directory are judged once each; 1, True and "1" stay distinct."""
    first = judge("smtp_virtual_server", ("7",))
    assert judge("smtp_virtual_server", ("7",)) is first
    assert judge("smtp_virtual_server", ["7"]) == first
    assert judge("smtp_virtual_server", ("1",)).verdict == "ok"
    assert judge("smtp_virtual_server", (True,)).verdict == "unknown"
    assert judge("smtp_virtual_server", (1,)).verdict == "ok"
    assert judge("smtp_virtual_server", ("7",), "sbs").verdict == "exempt"
