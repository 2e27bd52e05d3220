"""Boxed answers and the MATH data set's answer normalisation, as the releases' rewards use them.

    last_boxed(text)        the last \\boxed{...} (or \\boxed x, or \\fbox{...}) of `text`
    unbox(boxed)            its content
    is_equiv(a, b)          a and b agree after MATH's `strip_string` normalisation

This is the rule of the MATH paper's code (Hendrycks et al.) as the GDSD release states it
(gdsd/utils/math500_utils.py). The d1 and d-OPSD releases state the same rule with a few steps
that raise on odd input (a second "\\text{ ", "\\frac" or "\\sqrt" at the very end, a non-integer
"a/b"); their `is_equiv` then compares the raw strings. `strict=True` reproduces that: the step
raises `NotNormalisable` and `is_equiv` falls back to equality. math-verify, not this, is the
evaluation checker (lm-eval's minerva_math).
"""

from __future__ import annotations


class NotNormalisable(ValueError):
    """A step of d1's normalisation that fails on this string (its callers catch it)."""


def last_boxed(text: str) -> str | None:
    """The last boxed expression of `text`, delimiters included:
    - with "\\boxed " (a space) anywhere: "\\boxed " + what follows its last occurrence up to a "$";
    - else from the last "\\boxed" (failing that, the last "\\fbox") to the brace that closes the
      first one opened after it; None when it never closes;
    - the whole text when it has neither."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[start:end + 1]
    return None


def unbox(boxed: str | None, strict: bool = False) -> str | None:
    """The content of "\\boxed{x}" or "\\boxed x"; anything else (\\fbox{x} included) unchanged.
    The lenient rule (GDSD) passes None through and leaves a text that contains "\\boxed " but does
    not start with it unchanged; the strict rule (d1, d-OPSD) raises NotNormalisable for both."""
    if boxed is None:
        if strict:
            raise NotNormalisable("no boxed expression")
        return None
    if "\\boxed " in boxed:
        if boxed.startswith("\\boxed "):
            return boxed[len("\\boxed "):]
        if strict:
            raise NotNormalisable("'\\boxed ' inside the text")
        return boxed
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{"):-1]
    return boxed


def strip_string(text: str, strict: bool = False) -> str:
    """MATH's normalisation of an answer string, step by step in the published order."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        text = text.replace(old, new)
    if "\\text{ " in text:                                 # units on the right
        parts = text.split("\\text{ ")
        if strict and len(parts) != 2:
            raise NotNormalisable("more than one '\\text{ '")
        text = parts[0]
    # The published code removes "\\%" twice (its second literal is "\%"); a second pass can find
    # one the first created, e.g. in "\\\\%%" after "\\\\" -> "\\".
    text = text.replace("\\%", "").replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:             # "k = 3" -> "3"
        text = sides[1]
    text = fix_sqrt(text, strict).replace(" ", "")
    text = fix_fracs(text, strict)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return fix_a_slash_b(text, strict)


def fix_sqrt(text: str, strict: bool) -> str:
    """\\sqrt3 -> \\sqrt{3}."""
    if "\\sqrt" not in text:
        return text
    first, *rest = text.split("\\sqrt")
    for part in rest:
        if not part:
            if strict:
                raise NotNormalisable("'\\sqrt' at the end")
            first += "\\sqrt"
        elif part[0] != "{":
            first += "\\sqrt{" + part[0] + "}" + part[1:]
        else:
            first += "\\sqrt" + part
    return first


def fix_fracs(text: str, strict: bool) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}; the text unchanged when a \\frac has
    fewer than two characters after it (lenient: also when it has none)."""
    first, *rest = text.split("\\frac")
    for part in rest:
        first += "\\frac"
        if not part:
            if strict:
                raise NotNormalisable("'\\frac' at the end")
            return text
        if part[0] == "{":
            first += part
            continue
        if len(part) < 2:
            return text
        numerator, denominator, tail = part[0], part[1], part[2:]
        if denominator != "{":
            first += "{" + numerator + "}{" + denominator + "}" + tail
        else:
            first += "{" + numerator + "}" + denominator + tail
    return first


def fix_a_slash_b(text: str, strict: bool) -> str:
    """"3/4" -> \\frac{3}{4} when both sides are integers written plainly."""
    sides = text.split("/")
    if len(sides) != 2:
        return text
    try:
        numerator, denominator = int(sides[0]), int(sides[1])
    except ValueError:
        if strict:
            raise NotNormalisable("a/b with a non-integer side") from None
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


def is_equiv(answer: str | None, gold: str | None, strict: bool = False) -> bool:
    """Both None, or equal after `strip_string`; when d1's normalisation raises (strict), equal as
    written."""
    if answer is None or gold is None:
        return answer is None and gold is None
    try:
        return strip_string(answer, strict) == strip_string(gold, strict)
    except NotNormalisable:
        return answer == gold
