"""Verdicts: did a program's output match a test's expected output?

This runs in the trusted parent process. The sandboxed child only reports what the program printed
(standard-input problems) or the ``repr()`` of what the called function returned (call-based
problems); everything here is pure comparison logic on those strings and never executes them.

Three modes, because "passed" means different things in different papers:

- ``"apps"``: bit-for-bit the verdicts of the APPS reference harness (hendrycks/apps
  ``eval/testing_util.py``; see ``specs/apps-verdicts.md`` 2.5-2.6). Lenient and order-insensitive:
  a shuffled, deduplicated or approximately-equal output can pass. Use it to reproduce published
  APPS numbers or to label data "as APPS would".
- ``"lcb"``: the LiveCodeBench (2025) comparison. Line by line after stripping, each line equal as
  text or as a list of ``Decimal`` tokens (``1.0 == 1``, no tolerance). Use it as a sensible default
  for reward labels: tolerant of formatting, not of wrong answers.
- ``"strict"``: per-line ``rstrip`` exact match, and type-aware equality for call results
  (``True != 1``). Use it to measure how many "passes" the lenient modes grant to outputs a judge
  would reject, or when labels must not reward sloppy output.

Every comparison returns ``(passed, reason)``; ``reason`` is empty on a pass and otherwise a short
(<= 200 chars) explanation, so disagreements between modes can be inspected per test.
"""

import ast
import math
import warnings
from decimal import Decimal

import numpy as np

MODES = ("apps", "lcb", "strict")
_MAX_REASON = 200


# -----------------------------------------------------------------------------
# small helpers


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown comparison mode {mode!r}; valid modes are {', '.join(MODES)}")


def _short(s: str, n: int = _MAX_REASON) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _quote(s: str) -> str:
    # repr() makes control characters and trailing '\r' visible; cut first so huge lines stay cheap
    return '"' + _short(repr(s[:100])[1:-1], 60) + '"'


def _show(value) -> str:
    try:
        return _short(repr(value), 80)
    except Exception:  # a pathological value must not break the verdict
        return "<unprintable>"


def _line_diff(got: list[str], want: list[str]) -> str:
    """First difference between two line lists, phrased for humans ("" if equal)."""
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            return _short(f"line {i + 1}: expected {_quote(w)}, got {_quote(g)}")
    if len(got) != len(want):
        return f"expected {len(want)} lines, got {len(got)}"
    return ""


def _join_expected(expected: str | list[str]) -> str:
    # Datasets store expected stdout either as one string or as a list of lines. The reference
    # joins lists with "\n" (and would crash on non-strings; we str() them instead).
    if isinstance(expected, list):
        return "\n".join(str(x) for x in expected)
    return str(expected)


def _int_keyed(d: dict) -> dict:
    # JSON forces dict keys to be strings; the APPS reference converts them back to int
    return {int(k): v for k, v in d.items()}


# -----------------------------------------------------------------------------
# standard-input problems


def _apps_stdout(output: str, expected: str) -> tuple[bool, str]:
    """The APPS cascade (spec 2.5): first check that succeeds wins."""
    lines = output.splitlines()
    want = expected.strip()
    if "\n".join(lines).strip() == want:  # 1. whole text, stripped
        return True, ""
    if "\n".join(line.strip() for line in lines).strip() == want:  # 2. per-line strip of the output
        return True, ""
    if lines == [expected]:  # 3. one line equal to the whole expectation (never decides: check 1 accepted it)
        return True, ""
    exp = [x.strip() for x in expected.split("\n") if x != ""]  # 4. drop empty pieces, *then* strip
    if lines == exp:
        return True, ""
    out = [line for line in lines if line != ""]  # 5. drop truly empty output lines (check 7 accepts it too)
    if out == exp:
        return True, ""
    try:  # 6. every line a single number: numpy.allclose, scaled by the expected value
        out_f = [float(x) for x in out]
        exp_f = [float(x) for x in exp]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(out_f) == len(exp_f) and bool(np.allclose(out_f, exp_f)):
                return True, ""
    except (ValueError, OverflowError, TypeError):
        pass
    # 7. set of token sets; whitespace-only output lines vanish but whitespace-only expected
    # lines survive as empty sets (asymmetry of the reference)
    exp_sets = [x.split() for x in exp]
    out_sets = [line.split() for line in out if line.split()]
    if {frozenset(s) for s in out_sets} == {frozenset(s) for s in exp_sets}:
        return True, ""
    try:  # 8. same, with every token rounded to 3 decimals (only if all tokens are numbers)
        out_r = {frozenset(round(float(t), 3) for t in s) for s in out_sets}
        exp_r = {frozenset(round(float(t), 3) for t in s) for s in exp_sets}
        if out_r == exp_r:
            return True, ""
    except (ValueError, OverflowError, TypeError):
        pass
    return False, _line_diff([line.strip() for line in out], exp) or "no APPS check matched"


def _decimal_tokens(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (ArithmeticError, ValueError):
        return None


def _lcb_stdout(output: str, expected: str) -> tuple[bool, str]:
    """LiveCodeBench: same line count; each line equal as text or as a list of Decimals."""
    got = [line.strip() for line in output.strip().split("\n")]
    want = [line.strip() for line in expected.strip().split("\n")]
    if len(got) != len(want):
        return False, f"expected {len(want)} lines, got {len(got)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g == w:
            continue
        g_dec, w_dec = _decimal_tokens(g), _decimal_tokens(w)
        try:
            if g_dec is not None and w_dec is not None and g_dec == w_dec:
                continue
        except ArithmeticError:  # comparing a signalling NaN raises InvalidOperation
            pass
        return False, _short(f"line {i + 1}: expected {_quote(w)}, got {_quote(g)}")
    return True, ""


def _strict_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def compare_stdout(output: str, expected: str | list[str], mode: str) -> tuple[bool, str]:
    """Judge captured stdout text against a test's expected output.

    Returns (passed, reason); reason is "" when passed, else a short human-readable reason
    (<= 200 chars), e.g. 'line 3: expected "5", got "6"' or 'expected 4 lines, got 3'.
    """
    _check_mode(mode)
    expected = _join_expected(expected)
    if mode == "apps":
        return _apps_stdout(output, expected)
    if mode == "lcb":
        return _lcb_stdout(output, expected)
    diff = _line_diff(_strict_lines(output), _strict_lines(expected))
    return diff == "", diff


# -----------------------------------------------------------------------------
# call-based problems


def apps_call_arguments(inputs: list) -> list:
    """APPS reference rule (spec 2.6) for the argument list, used by the child in apps mode only.

    If inputs[0] is a dict, the arguments become [that dict with every key converted by int()] and
    any other arguments are dropped (the reference assumes a singleton list); if any key fails
    int(), the inputs are returned unchanged.
    """
    try:
        if isinstance(inputs[0], dict):
            return [_int_keyed(inputs[0])]
    except Exception:  # empty/non-list inputs or non-integer keys: the reference leaves them alone
        pass
    return inputs


def _apps_expected(expected):
    try:
        if isinstance(expected, dict):
            return [_int_keyed(expected)]
        if isinstance(expected, list) and expected and isinstance(expected[0], dict):
            return [_int_keyed(expected[0])]
    except Exception:  # a key that is not an integer: unchanged, as in the reference
        pass
    return expected


def _parse_repr(result_repr: str):
    """ast.literal_eval, plus the bare names inf/nan that repr() emits for special floats."""
    tree = ast.parse(result_repr.strip(), mode="eval")
    specials = {"inf": math.inf, "nan": math.nan}
    for node in ast.walk(tree):  # iterative, so deep trees cannot overflow the stack here
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.Name) and value.id in specials:
                setattr(node, field, ast.Constant(specials[value.id]))
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.Name) and item.id in specials:
                        value[i] = ast.Constant(specials[item.id])
    return ast.literal_eval(tree)


def _strict_equal(a, b) -> bool:
    """Structural equality where bool only equals bool; int/float compare numerically."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):  # keys themselves are matched with ==
        return a.keys() == b.keys() and all(_strict_equal(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def _apps_call(result, expected) -> bool:
    expected = _apps_expected(expected)
    if result == expected:
        return True
    if isinstance(expected, list) and expected and result == expected[0]:
        return True  # outputs are usually stored wrapped: [[3]] for a return value of [3]
    try:  # a list of tuples against a list of lists
        return isinstance(result[0], tuple) and [list(t) for t in result] == expected[0]
    except Exception:
        return False


def compare_call_result(result_repr: str, expected, mode: str) -> tuple[bool, str]:
    """Judge a call-based result.

    `result_repr` is repr() of the returned value as produced in the child (which has already turned
    a top-level tuple into a list, as the reference does). It is parsed with ast.literal_eval (never
    executed); anything that is not a plain literal fails. Then the mode's rule applies:

    - apps: int-keyed dict rule for the expectation, then R == E, or R == E[0], or a list of tuples
      equal to E[0] as lists; Python == semantics (1 == 1.0 == True).
    - lcb: R == E; also R == E[0] when E is a one-element list, because APPS-style data stores
      return values both wrapped ([[3]]) and bare ([3]) and a scalar cannot be told apart.
    - strict: like lcb, but with type-aware equality (True != 1; 1 == 1.0).
    """
    _check_mode(mode)
    try:
        result = _parse_repr(result_repr)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError):
        return False, f"result is not a plain Python literal: {_short(str(result_repr), 60)}"
    if isinstance(result, tuple):
        result = list(result)
    if isinstance(expected, tuple):
        expected = list(expected)
    try:
        if mode == "apps":
            passed = _apps_call(result, expected)
        else:
            equal = _strict_equal if mode == "strict" else (lambda a, b: a == b)
            passed = equal(result, expected) or (
                isinstance(expected, list) and len(expected) == 1 and equal(result, expected[0])
            )
    except Exception as e:  # e.g. RecursionError on absurdly deep values
        return False, _short(f"comparison failed: {type(e).__name__}")
    return (True, "") if passed else (False, f"expected {_show(expected)}, got {_show(result)}")
