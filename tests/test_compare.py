import warnings

import numpy as np
import pytest

from codevalue.compare import MODES, apps_call_arguments, compare_call_result, compare_stdout

# (expected, output, apps, lcb, strict): the probed consequences of the APPS cascade (spec 2.5) and
# what the two stricter modes make of the same inputs.
PROBED = [
    ("1 2\n3", "3\n2 1\n", True, False, False),  # token sets: line and token order ignored
    ("YES\nYES\nNO", "NO\nYES\n", True, False, False),  # set of lines: repeats ignored
    ("1000000007", "1000000000\n", True, False, False),  # allclose, rtol 1e-5
    ("0.1234", "0.1231\n", True, False, False),  # rounded to 3 decimals
    ("123456789012345679 1", "123456789012345678 1\n", True, False, False),  # float() rounding
    ("yes", "YES\n", False, False, False),  # case-sensitive everywhere
    ("1\n2", "1\n", False, False, False),  # missing line
    ("0", "", False, False, False),  # empty output
    ("1\r\n2\r\n", "1\n2\n", True, True, True),  # CRLF in the expected output
    ("", "", True, True, True),  # empty expected, no output
]


@pytest.mark.parametrize("expected,output,apps,lcb,strict", PROBED)
def test_probed_consequences_in_every_mode(expected, output, apps, lcb, strict):
    for mode, want in (("apps", apps), ("lcb", lcb), ("strict", strict)):
        passed, reason = compare_stdout(output, expected, mode)
        assert passed is want, (mode, reason)
        assert (reason == "") is want
        assert len(reason) <= 200


def test_apps_cascade_details():
    ok = lambda out, exp: compare_stdout(out, exp, "apps")[0]  # noqa: E731
    assert ok(" 1\n 2\n", "1\n2") is True  # per-line strip of the output (checks 2 and 7)
    assert compare_stdout("1\n\n2\n", "1\n2", "apps") == (True, "")  # empty output lines dropped (checks 5, 7)
    assert ok("1\n2\n", "1\n\n2") is True  # empty expected pieces dropped (checks 4, 5 and 7)
    assert ok("a\nb\n", "a\n \nb") is False  # whitespace-only expected line survives as ""
    # the stripped lines are equal, yet no check takes two spaces for one: nothing to point at but the cascade
    assert compare_stdout("a\n  \nb\n", "a\n \nb", "apps") == (False, "no APPS check matched")
    assert ok("1\u20282\n", "1\n2") is True  # splitlines() splits on U+2028 too
    assert ok("1.00001\n", "1") is True  # |o - e| <= 1e-8 + 1e-5 * |e|
    assert ok("1\n", "1.002") is False  # outside both allclose and 3-decimal rounding
    assert ok("Infinity\n", "inf") is True  # float() accepts it; allclose(inf, inf)
    assert ok("NaN\n", "nan") is False  # nan never matches, not even in the rounded sets
    assert ok("1000000007 1\n", "1000000000 1") is False  # allclose only for one-number lines
    assert ok("1  2\n", "2 1") is True  # internal spacing and token order ignored
    assert ok("1 2 2\n", "2 1") is True  # repeated tokens ignored
    assert ok("1 2\n", "1 2 3") is False
    assert ok("5", ["5"]) is True and ok("1\n2", ["1", "2"]) is True  # lists are joined with "\n"
    assert ok("0.1236\n", "0.1231") is False  # rounds to 0.124 vs 0.123


# Inputs that one check of the APPS cascade accepts and no other: deleting that check fails them. The token sets
# of check 7 accept everything that checks 3 and 5 accept (3: one output line equal to the whole expectation,
# which check 1 accepted already; 5: the non-empty output lines equal the stripped expected ones), so those two
# never decide a verdict and have no row here (equivalent mutants). Checks 2 and 4 decide alone only when a
# whitespace-only expected line, which check 7 keeps as an empty token set, meets output without such a line.
@pytest.mark.parametrize("output,expected,check", [
    ("a\n \nb\n", "a\n \nb", 1),  # the " " line: check 7 drops it from the output, keeps it in the expectation
    ("a \nb\n", "a\nb\n ", 2),  # per-line strip of the output; the trailing " " line leaves check 7 an empty set
    (" \na \nb\n", " \na\nb", 2),
    ("a\n\nb\n", "a\n \nb", 4),  # the " " line, stripped to "", equals the empty output line
    ("1000000007\n", "1000000000", 6),  # numpy.allclose of one-number lines
    ("c\nb a\n", "a b\nc", 7),  # token sets (not numbers, so check 8 cannot accept them)
    ("0.1234\n", "0.1231", 8),  # tokens rounded to 3 decimals
])
def test_apps_cascade_check_that_decides_alone(output, expected, check):
    assert compare_stdout(output, expected, "apps") == (True, ""), f"check {check}"


def test_apps_numeric_check_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        passed, reason = compare_stdout("1e308\n", "-1e308", "apps")
        assert (passed, reason) == (False, 'line 1: expected "-1e308", got "1e308"')
        assert compare_stdout("1e308\n-1e308\n", "-1e308\n1e308", "apps")[0] is True  # token sets
        assert compare_stdout("1" * 400 + "\n", "inf", "apps")[0] is True  # float() of it is inf
    with np.errstate(all="raise"):  # nor does the verdict depend on the caller's numpy error settings
        assert compare_stdout("1e308\n", "-1e308", "apps")[0] is False
        assert compare_stdout("Infinity\n", "inf", "apps")[0] is True


def test_lcb_rules():
    ok = lambda out, exp: compare_stdout(out, exp, "lcb")[0]  # noqa: E731
    assert ok("1.0 2\n", "1 2.000") is True  # Decimal tokens
    assert ok("1e3\n", "1000") is True
    assert ok("1  2\n", "1 2") is True  # numeric lines: token-wise
    assert ok("a  b\n", "a b") is False  # text lines: exact after strip
    assert ok("  a b  \n\n\n", "a b") is True  # whole text and each line stripped
    assert ok("a\n  b c\n", "a\nb c") is True  # leading spaces of a later line (text, not numbers)
    assert ok("a\nb c\n", "a\n  b c") is True  # ... of the expected line too
    assert ok("1\n\n2\n", "1\n2") is False  # an empty middle line counts
    assert ok("0.30000000000000004\n", "0.3") is False  # no tolerance
    assert ok("1\r\n2\r\n", "1\n2") is True
    assert ok("NaN\n", "nan") is False
    assert ok("sNaN\n", "snan") is False  # comparing signalling NaNs must not raise
    assert compare_stdout("1\n2\n", "1\n3", "lcb") == (False, 'line 2: expected "3", got "2"')
    assert compare_stdout("1\n", "1\n3", "lcb") == (False, "expected 2 lines, got 1")
    assert compare_stdout("1.0\n2\n", "1\n3", "lcb") == (False, 'line 2: expected "3", got "2"')  # goes on after


def test_strict_rules():
    ok = lambda out, exp: compare_stdout(out, exp, "strict")[0]  # noqa: E731
    assert ok("1 2  \n3\t\n\n\n", "1 2\n3") is True  # rstrip and trailing empty lines
    assert ok(" 1\n", "1") is False  # leading whitespace matters
    assert ok("\n1\n", "1") is False  # leading empty line matters
    assert ok("1\n\n2\n", "1\n2") is False
    assert ok("1.0\n", "1") is False
    assert ok("1\n2\n", ["1", "2"]) is True
    assert compare_stdout("1\n2\n", "1\n2\n3\n4", "strict") == (False, "expected 4 lines, got 2")
    assert compare_stdout("1\n6\n", "1\n5", "strict") == (False, 'line 2: expected "5", got "6"')


def test_reasons_are_short_and_concrete():
    passed, reason = compare_stdout("x" * 10_000, "y" * 10_000, "strict")
    assert passed is False and len(reason) <= 200 and "..." in reason
    passed, reason = compare_stdout("1\n2 \r\n", "1\n3", "apps")
    assert (passed, reason) == (False, 'line 2: expected "3", got "2"')
    passed, reason = compare_call_result(repr(list(range(1000))), [[1]], "apps")
    assert passed is False and len(reason) <= 200 and reason.startswith("expected [[1]], got [0, 1, 2")


def test_call_reasons_quote_both_values_cut_to_80_characters():
    long = "x" * 200
    assert compare_call_result(repr(long), ["y"], "strict") == (False, f"expected ['y'], got '{'x' * 76}...")
    assert compare_call_result("nan", [1.0], "lcb") == (False, "expected [1.0], got nan")  # nan parsed, not refused
    # a dict against a list: unequal (strict compares types), not a failed comparison
    assert compare_call_result("{1: 2}", [[1]], "strict") == (False, "expected [[1]], got {1: 2}")
    deep = [1]
    for _ in range(10_000):
        deep = [deep]
    for mode in MODES:  # repr() of the expectation overflows the stack: the verdict still stands
        assert compare_call_result("1", deep, mode) == (False, "expected <unprintable>, got 1")


def test_unparsable_result_is_quoted_cut_to_60_characters():
    text = "<Foo " + "x" * 100 + ">"
    assert compare_call_result(text, [1], "lcb") == (False, f"result is not a plain Python literal: {text[:57]}...")


class Unequal:
    """An expectation whose comparison raises (only reachable through the Python API)."""

    def __eq__(self, other):
        raise ValueError("cannot compare")

    __hash__ = None


def test_a_comparison_that_raises_is_a_failure():
    for mode in ("apps", "lcb"):  # strict compares types first and never calls it
        assert compare_call_result("1", Unequal(), mode) == (False, "comparison failed: ValueError")


def test_lines_in_reasons_are_cut_to_60_characters():
    x60, x61 = "x" * 60, "x" * 61
    assert compare_stdout(x60, "y", "strict") == (False, f'line 1: expected "y", got "{x60}"')
    assert compare_stdout(x61, "y", "strict") == (False, f'line 1: expected "y", got "{"x" * 57}..."')
    assert compare_stdout("y", "x" * 10_000, "lcb") == (False, f'line 1: expected "{"x" * 57}...", got "y"')


def test_unknown_mode():
    with pytest.raises(ValueError, match="'APPS'.*apps, lcb, strict"):
        compare_stdout("", "", "APPS")
    with pytest.raises(ValueError, match="'exact'"):
        compare_call_result("1", [1], "exact")
    assert MODES == ("apps", "lcb", "strict")


# (result_repr, expected, apps, lcb, strict)
CALLS = [
    ("3", [3], True, True, True),  # wrapped scalar, the common APPS layout
    ("3", 3, True, True, True),  # bare scalar
    ("[1, 2]", [[1, 2]], True, True, True),  # wrapped list
    ("[1, 2]", [1, 2], True, True, True),  # bare list
    ("[1]", [1], True, True, True),
    ("1", [1, 2], True, False, False),  # APPS: R == E[0] for any non-empty list
    ("4", [3], False, False, False),
    ("'abc'", ["abc"], True, True, True),
    ("'abc'", ["ab"], False, False, False),
    ("(1, 2)", [[1, 2]], True, True, True),  # a top-level tuple counts as a list
    ("[(1, 2), (3, 4)]", [[[1, 2], [3, 4]]], True, False, True),  # list of tuples vs E[0]
    ("[(1, 2), (3, 4)]", [[1, 2], [3, 4]], False, False, True),  # bare: only strict accepts it
    ("True", [1], True, True, False),  # 1 == True in Python, not in strict
    ("True", [True], True, True, True),
    ("1.0", [1], True, True, True),  # int/float compare numerically everywhere
    ("[True, 0]", [[1, False]], True, True, False),
    ("0.30000000000000004", [0.3], False, False, False),  # no float tolerance
    ("{1: 'a'}", [{"1": "a"}], True, False, False),  # APPS int-keys the expected dict
    ("{1: 'a'}", {"1": "a"}, True, False, False),
    ("{'x': 1}", {"x": 1}, True, True, True),  # non-integer keys: left alone
    ("{'x': True}", {"x": 1}, True, True, False),
    ("inf", [float("inf")], True, True, True),  # repr() of special floats is a bare name
    ("[-inf, 1.5]", [[float("-inf"), 1.5]], True, True, True),
    ("[1.5, inf]", [[1.5, float("inf")]], True, True, True),  # a bare name as a list item
    ("(1+0j)", [1], True, True, False),  # complex == int in Python; strict wants the same type
    ("[1, 2]", (1, 2), True, True, True),  # a tuple expectation counts as a list
    ("nan", [float("nan")], False, False, False),
    ("None", [None], True, True, True),
    ("set()", [[]], False, False, False),
]


@pytest.mark.parametrize("result_repr,expected,apps,lcb,strict", CALLS)
def test_call_results_in_every_mode(result_repr, expected, apps, lcb, strict):
    for mode, want in (("apps", apps), ("lcb", lcb), ("strict", strict)):
        passed, reason = compare_call_result(result_repr, expected, mode)
        assert passed is want, (mode, reason)
        assert (reason == "") is want


def test_apps_call_arguments():
    assert apps_call_arguments([{"1": "a", "2": "b"}, 7]) == [{1: "a", 2: "b"}]  # extra args dropped
    assert apps_call_arguments([{"x": 1}, 7]) == [{"x": 1}, 7]  # a key fails int(): unchanged
    assert apps_call_arguments([1, {"1": 2}]) == [1, {"1": 2}]  # only inputs[0] matters
    assert apps_call_arguments([]) == []
    args = [[1, 2], 3]
    assert apps_call_arguments(args) is args


@pytest.mark.parametrize(
    "result_repr",
    [
        "<__main__.Foo object at 0x7f3a2c1b2d30>",
        "Foo(x=1)",
        "frozenset({1})",
        "__import__('os').system('true')",
        "1 +",
        "",
        "\x00",
    ],
)
def test_unparsable_repr_fails_cleanly(result_repr):
    for mode in MODES:
        passed, reason = compare_call_result(result_repr, [1], mode)
        assert passed is False
        assert reason.startswith("result is not a plain Python literal")
        assert len(reason) <= 200


@pytest.mark.parametrize(
    "result_repr",
    [
        "[" * 100_000 + "]" * 100_000,
        "-" * 100_000 + "1",
        "-" * 5_000 + "1",
        "1+" * 100_000 + "1",
        "[1, " * 5_000 + "1" + "]" * 5_000,
    ],
)
def test_deeply_nested_repr_does_not_crash(result_repr):
    for mode in MODES:
        assert compare_call_result(result_repr, [1], mode)[0] is False


def test_deeply_nested_expected_does_not_crash():
    deep = [1]
    for _ in range(100_000):
        deep = [deep]
    for mode in MODES:
        passed, reason = compare_call_result("[[1]]", deep, mode)
        assert passed is False and reason
