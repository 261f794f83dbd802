"""The built-in reward rules (`builtin` rewards, task.reward): exact_match, numeric, format and math."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from kuberl_workers.catalog import BUILTIN_REWARDS

RewardFn = Callable[[str, str], float]
# Completions are cut to this many characters before scoring: a reward never sees unbounded input.
MAX_COMPLETION_CHARS = 65536
# A number as people write it: sign, thousands separators (groups of exactly three digits), decimals, an
# exponent, or a fraction. Bounded repetitions keep the scan linear on hostile input.
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3}){1,21}|\d{1,64})(?:\.\d{1,64})?(?:[eE][-+]?\d{1,4})?"
    r"(?:\s{0,2}/\s{0,2}\d{1,64})?"
)
_MAX_EXPONENT = 1000  # Fraction(10) ** 10**9 would hang: larger exponents are no answer anyone checks


def parse_number(token: str) -> Fraction | None:
    """One number token (as `_NUMBER` matches it) -> its exact value; None for a zero denominator or a huge
    exponent. "70,000" = 70000, "1e-05" = 1/100000, "3.0" = 3, "-1/2" = -0.5.
    """
    text = token.replace(",", "").replace(" ", "")
    numerator, _, denominator = text.partition("/")
    try:
        decimal = Decimal(numerator)
        if abs(decimal.adjusted()) > _MAX_EXPONENT:
            return None
        value = Fraction(decimal)
        if denominator:
            value /= Fraction(int(denominator))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    return value


def _last_number(text: str) -> Fraction | None:
    found = _NUMBER.findall(text[-MAX_COMPLETION_CHARS:])
    return parse_number(found[-1]) if found else None


def exact_match(completion: str, answer: str) -> float:
    """1 when the completion, trimmed, equals the answer, trimmed."""
    return float(completion[:MAX_COMPLETION_CHARS].strip() == answer.strip())


def numeric(completion: str, answer: str) -> float:
    """1 when the last number in the completion equals the answer's number as an exact rational: thousands
    separators, a sign, a currency symbol around it, scientific notation, trailing zeros and fractions compare by
    value ("$70,000" = "70000", "0.00001" = "1e-05", "1/2" = "0.5"; "-5" != "1e-05").
    """
    got, want = _last_number(completion), _last_number(answer)
    return float(got is not None and want is not None and got == want)


def format_reward(completion: str, answer: str) -> float:
    """0.9 x numeric, plus 0.1 when the completion is just the number (a well-formed answer line)."""
    well_formed = _NUMBER.fullmatch(completion[:MAX_COMPLETION_CHARS].strip()) is not None
    return 0.9 * numeric(completion, answer) + 0.1 * well_formed


_BOXED = "\\boxed{"


def _last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def math_reward(completion: str, answer: str) -> float:
    """1 when the completion's final answer equals the reference answer as a mathematical expression, by the
    `math-verify` library (Hugging Face): the last `\\boxed{}` or LaTeX/number in the completion against the
    answer parsed as LaTeX (fractions, roots, percentages, sets, intervals, `\\text{}` units dropped). A plain
    number the library misreads (scientific notation such as `1e-5`) is compared as `numeric` compares it.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    text = completion[:MAX_COMPLETION_CHARS]
    gold_text = answer.strip()
    if "$" not in gold_text and _BOXED not in gold_text:
        gold_text = f"${gold_text}$"  # a bare answer is LaTeX math, as in MATH and GSM8K datasets
    gold = parse(gold_text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])
    predicted = parse(text)
    if gold and predicted and verify(gold, predicted):
        return 1.0
    if _NUMBER.fullmatch(answer.strip()) is not None:
        final = _last_boxed(text)
        return numeric(text if final is None else final, answer)
    return 0.0


REGISTRY: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "numeric": numeric,
    "format": format_reward,
    "math": math_reward,
}
assert tuple(REGISTRY) == BUILTIN_REWARDS, "the API's reward enum and the registry must list the same names"
