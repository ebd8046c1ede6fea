"""Answer self-check: problems an answer shows on its own, without a second model.

The cascade's ``selfcheck`` confidence signal (pipelines/query/modes/cascade.py). Where a model is
unsure or wrong, its answer often says so in ways a few rules can read:

- **arithmetic that does not compute**: a statement ``expr = value`` whose expression does not
  evaluate to the value it states (``(12 / 20) x 100 = 55%``), in the text or in calculator
  annotations (``<<3*60=180>>``). Numbers may carry ``$``, thousands separators and ``%``; a
  stated value is right when it is the expression rounded to the digits it shows. Statements
  that mix in words or units (``48 car washes * $15 = $720``) are not judged;
- **cut off**: generation stopped at the token limit (finish reason ``length``), or the text
  visibly stops mid-way: inside a calculator annotation, or after an operator, ``=``, an
  opening bracket, a comma or a colon;
- **unsure wording**: self-correction, approximation or "it is not possible" phrases
  (``_UNSURE``) that the answer of a model which lost its way tends to contain.

``check`` lists the problems by name (the response's cascade path shows them); its
``confidence`` is 1 / (1 + problems): 1.0 when nothing was found, 0.5 with one problem, and so
on. With the default threshold 1.0 the cascade escalates an answer with any problem.

On RouteLLM's GSM8K data (Mixtral-8x7B's answers, evals/routing_offline.py), 16.7% of the
answers show a problem, and 88.5% of those are wrong (of the rest, 25.8%). The checks only see
what an answer states: a wrong answer with consistent arithmetic passes, and answers without
numbers or hedges always do, so for other traffic this signal is strict only where it has
something to read. The phrase list was chosen looking at that GSM8K data.

>>> check("She has 16 - 3 = 13 eggs, and sells 13 * 2 = 27 of them.").problems
('arithmetic: 13 * 2 = 27 (it is 26)',)
>>> check("16 - 3 = 13 eggs.").confidence
1.0
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass

MAX_STATEMENTS = 200  # equations read per answer (a pathological answer is not read to the end)
MAX_EXPRESSION_CHARS = 120  # how far back from an "=" an expression may start

_UNSURE = re.compile(
    r"\b(however|approximately|round(?:ed|ing)? (?:up|down|to)|whole number|not possible|impossible|"
    r"doesn't make sense|does not make sense|can(?:not|'t) be determined|not enough information|"
    r"i made a mistake|my mistake|i apologi[sz]e|actually,|i'm not sure|i am not sure)\b", re.I)
_CALC = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# one token of an arithmetic expression: a number (maybe a percentage), an operator, a bracket
_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?%?|\.\d+%?|[-+*/^()x])")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}


@dataclass(frozen=True)
class SelfCheck:
    problems: tuple[str, ...]
    equations: int  # statements judged

    @property
    def confidence(self) -> float:
        return 1.0 / (1 + len(self.problems))


def _normalise(text: str) -> str:
    text = text.replace("\\*", "*").replace("×", "*").replace("÷", "/").replace("−", "-").replace("$", "")
    return _THOUSANDS.sub("", text)


def _value(node: ast.AST) -> float:
    """A small arithmetic evaluator: numbers, + - * / and bounded powers; anything else raises."""
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 12 or abs(left) > 1e6):
            raise ValueError("power too large to judge")
        return float(_OPS[type(node.op)](left, right))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def _tokens(text: str) -> list[str] | None:
    """``text`` as arithmetic tokens, or None when anything else is in it."""
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            return None
        out.append(m.group(1))
        pos = m.end()
    return out


def _evaluate(tokens: list[str]) -> float | None:
    """The value of an expression of ``tokens`` that has at least one operator (else None)."""
    if not any(t in "+-*/^x" for t in tokens) or all(t in "+-*/^x()" for t in tokens):
        return None
    for i, t in enumerate(tokens):  # "3 x 60" multiplies; "2x + 3" is algebra, not judged
        if t == "x" and not (0 < i < len(tokens) - 1 and tokens[i - 1] not in "+-*/^x(" and
                             tokens[i + 1] not in "+-*/^x)"):
            return None
    expr = " ".join("*" if t == "x" else "**" if t == "^" else f"({t[:-1]}/100)" if t.endswith("%") else t
                    for t in tokens)
    try:
        value = _value(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


def _stated(text: str) -> tuple[float, int, bool] | None:
    """The number a statement's right side starts with: (value, decimals shown, is a percentage)."""
    m = re.match(r"\s*(-?\d+(?:\.(\d+))?|-?\.(\d+))(%?)", text)
    if not m:
        return None
    return float(m.group(1)), len(m.group(2) or m.group(3) or ""), bool(m.group(4))


def _matches(value: float, stated: tuple[float, int, bool]) -> bool:
    number, decimals, percent = stated
    # right when it is the value rounded to the digits shown (a half is not: 7/2 = 3 is wrong)
    tolerance = max(0.5 * 10.0 ** -decimals - 1e-9, 1e-9 * abs(value))
    candidates = (number, number / 100) if percent else (number,)
    return any(abs(value - c) < tolerance for c in candidates)


def _left_expression(text: str) -> tuple[list[str], float] | None:
    """The longest arithmetic expression that ``text`` ends with, and its value."""
    # scan back over characters an expression may contain; stop at a letter (x aside)
    start = len(text)
    while start > max(0, len(text) - MAX_EXPRESSION_CHARS) and text[start - 1] in "0123456789.%+-*/^() x\t":
        start -= 1
    chunk = text[start:]
    for i in range(len(chunk)):  # the longest suffix that is an expression ("so 3 1 + 1" -> "1 + 1")
        if chunk[i] == " " or (i and chunk[i - 1] in "0123456789."):
            continue  # start at a token boundary
        tokens = _tokens(chunk[i:])
        if tokens and tokens[0] not in "+*/^x)" and tokens.count("(") == tokens.count(")"):
            value = _evaluate(tokens)
            if value is not None:
                return tokens, value
    return None


def _right_expression(text: str) -> list[str] | None:
    """The longest arithmetic expression ``text`` starts with."""
    m = re.match(r"[\d.%+\-*/^() x]*", text)
    chunk = m.group(0) if m else ""
    while chunk:
        tokens = _tokens(chunk)
        if tokens and tokens.count("(") == tokens.count(")") and tokens[-1] not in "+-*/^x(":
            return tokens
        chunk = chunk[:-1]
    return None


def _statements(text: str) -> list[tuple[str, float, str, bool]]:
    """(expression, its value, what the text states it is, whether that is right) for every
    judgeable ``expr = value`` of ``text`` (normalised)."""
    out: list[tuple[str, float, str, bool]] = []
    for expr, result in _CALC.findall(text):
        tokens = _tokens(expr.replace(" ", ""))
        value = _evaluate(tokens) if tokens else None
        stated = _stated(result)
        if value is not None and stated is not None:
            out.append((expr.strip(), value, result.strip(), _matches(value, stated)))
    for line in _CALC.sub(" ", text).splitlines():
        parts = line.split("=")
        for left, right in zip(parts, parts[1:]):
            if len(out) >= MAX_STATEMENTS:
                return out
            found = _left_expression(left)
            if found is None:
                continue
            tokens, value = found
            expr = " ".join(tokens)
            rhs = _right_expression(right.lstrip())
            rhs_value = _evaluate(rhs) if rhs else None
            if rhs_value is not None:  # "a = b * c = d": both sides are expressions
                out.append((expr, value, " ".join(rhs), abs(rhs_value - value) <= 1e-6 * max(1.0, abs(value))))
            elif (stated := _stated(right)) is not None:
                shown = f"{stated[0]:g}{'%' if stated[2] else ''}"
                out.append((expr, value, shown, _matches(value, stated)))
    return out


def _unfinished(answer: str) -> bool:
    text = answer.rstrip()
    return bool(text) and (text.count("<<") > text.count(">>") or text[-1] in "=+-*/(,:")


def check(answer: str, finish_reason: str | None = None) -> SelfCheck:
    """The problems ``answer`` shows: wrong arithmetic, cut off at the token limit, unsure wording."""
    statements = _statements(_normalise(answer))
    wrong = [(e, v, s) for e, v, s, ok in statements if not ok]
    problems = [f"arithmetic: {e} = {s} (it is {v:.6g})" for e, v, s in wrong]
    if finish_reason == "length":
        problems.append("cut off at the token limit")
    elif _unfinished(answer):
        problems.append("unfinished: the text stops mid-way")
    if m := _UNSURE.search(answer):
        problems.append(f"unsure wording ({m.group(0)!r})")
    return SelfCheck(tuple(problems), len(statements))
