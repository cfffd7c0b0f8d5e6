"""The semantic cache's false-hit guard: two queries whose embeddings are close must still mean the
same thing before one's answer may serve the other.

Cosine similarity alone cannot separate paraphrases from near misses (MiniLM: "What is the capital
of France?" vs a paraphrase 0.944, vs "What is NOT the capital of France?" 0.898). So a candidate
hits only if these *meaning-critical features* agree exactly:

* negation: the multiset of negation words (`not`, `n't`, `never`, `no`, `without`, ...);
* numbers: digits (with `1,000` = `1000`, `3.50` = `3.5`) and number words (`three`, `twenty-one`,
  `dozen`, ordinals `third`) as values;
* units and currencies (`km` = `kilometers`, `°C` = `celsius`, `$` = `usd`, ...);
* named entities: capitalised words that are not common sentence words (a lower-case mention of
  the same name still counts), compared case-insensitively;
* comparison direction: words like `more`/`less`, `before`/`after`, `largest`/`smallest`,
  `maximum`/`minimum` (an antonym pair flips the meaning while barely moving the embedding);
* key nouns: when the two queries differ by exactly ONE content word each (the shape of a swapped
  noun: "symbol for gold" / "symbol for silver", "feed my cat" / "feed my dog"), that word pair must
  be a known synonym or an inflection (`use`/`used`), else the queries differ. Paraphrases that
  restructure a sentence differ by more words and are left to the similarity threshold.

Names are capitalised words not at the start of a sentence (there, "Add", "Calculate" and "France"
look alike; such a word is still a content word for the key-noun check).

The guard is deliberately conservative: when in doubt it says "different", which costs a cache
miss, never a wrong answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["QueryFeatures", "extract_features", "same_meaning"]

_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere", "without",
    "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
    "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "except", "excluding",
}
_NEGATION_CANON = {"cannot": "not", "cant": "not", "without": "without", "except": "except", "excluding": "except"}

_UNITS = {
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "cm": "cm", "centimeter": "cm", "centimeters": "cm", "mm": "mm", "millimeter": "mm", "millimeters": "mm",
    "mi": "mile", "mile": "mile", "miles": "mile", "ft": "foot", "foot": "foot", "feet": "foot",
    "in": None, "inch": "inch", "inches": "inch", "yard": "yard", "yards": "yard",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "g": "g", "gram": "g", "grams": "g",
    "mg": "mg", "milligram": "mg", "milligrams": "mg", "lb": "lb", "lbs": "lb", "pound": "lb", "pounds": "lb",
    "oz": "oz", "ounce": "oz", "ounces": "oz", "ton": "ton", "tons": "ton", "tonne": "tonne", "tonnes": "tonne",
    "l": "l", "liter": "l", "liters": "l", "litre": "l", "litres": "l", "ml": "ml", "milliliter": "ml",
    "milliliters": "ml", "gallon": "gallon", "gallons": "gallon", "cup": "cup", "cups": "cup",
    "celsius": "celsius", "c": None, "fahrenheit": "fahrenheit", "f": None, "kelvin": "kelvin",
    "second": None, "seconds": "second", "sec": "second", "minute": "minute", "minutes": "minute",
    "min": "minute", "hour": "hour", "hours": "hour", "hr": "hour", "day": "day", "days": "day",
    "week": "week", "weeks": "week", "month": "month", "months": "month", "year": "year", "years": "year",
    "mph": "mph", "kph": "kph", "kmh": "kph", "percent": "percent", "%": "percent",
    "usd": "usd", "dollar": "usd", "dollars": "usd", "$": "usd", "eur": "eur", "euro": "eur", "euros": "eur",
    "€": "eur", "gbp": "gbp", "£": "gbp", "yen": "jpy", "¥": "jpy", "jpy": "jpy",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "byte": "byte", "bytes": "byte", "bit": "bit", "bits": "bit",
    "watt": "watt", "watts": "watt", "kw": "kw", "kwh": "kwh", "volt": "volt", "volts": "volt",
    "acre": "acre", "acres": "acre", "hectare": "hectare", "hectares": "hectare",
    "calorie": "calorie", "calories": "calorie", "kcal": "calorie", "joule": "joule", "joules": "joule",
}
# "°C" / "°F" are spelled out before tokenising; bare "c", "f", "in", "second" are too ambiguous.
_SYMBOLS = {"°c": " celsius ", "°f": " fahrenheit ", "%": " percent ", "$": " usd ", "€": " eur ", "£": " gbp ", "¥": " jpy "}

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000, "dozen": 12, "half": 0.5,
    "double": 2, "twice": 2, "triple": 3, "once": 1, "thrice": 3, "single": 1, "pair": 2,
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "hundredth": 100, "thousandth": 1000,
}

# Direction words: each maps to a polarity class; a query keeps the multiset of classes.
_DIRECTION = {
    "more": "more", "greater": "more", "larger": "more", "bigger": "more", "higher": "more", "taller": "more",
    "longer": "more", "heavier": "more", "faster": "more", "older": "more", "increase": "more",
    "less": "less", "fewer": "less", "smaller": "less", "lower": "less", "shorter": "less", "lighter": "less",
    "slower": "less", "younger": "less", "decrease": "less",
    "most": "most", "largest": "most", "biggest": "most", "highest": "most", "tallest": "most",
    "longest": "most", "heaviest": "most", "fastest": "most", "oldest": "most", "maximum": "most", "max": "most",
    "least": "least", "smallest": "least", "lowest": "least", "shortest": "least", "lightest": "least",
    "slowest": "least", "youngest": "least", "minimum": "least", "min": "least", "fewest": "least",
    "before": "before", "earlier": "before", "prior": "before", "after": "after", "later": "after",
    "above": "above", "over": "above", "below": "below", "under": "below",
    "north": "north", "south": "south", "east": "east", "west": "west",
    "buy": "buy", "sell": "sell", "import": "import", "export": "export", "win": "win", "lose": "lose",
    "true": "true", "false": "false", "legal": "legal", "illegal": "illegal", "safe": "safe", "unsafe": "unsafe",
    "hot": "hot", "cold": "cold", "best": "best", "worst": "worst", "good": "good", "bad": "bad",
}

# Capitalised words that are not names: sentence openers, question words, pronouns, common verbs.
_COMMON = set(
    """a an the what which who whom whose when where why how is are was were be been do does did can
    could would should will shall may might must please tell me give explain describe list name show
    i you he she it we they my your our their his her its this that these those there here in on at
    of for to from by with about into and or but if so as than then also hey hi hello could kindly
    let us say write find define summarize compare translate calculate convert help need want know
    does whats what's who's how's where's which's okay ok yes in-depth briefly quickly now today""".split()
)

_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d[\d,]*(?:\.\d+)?|[%$€£¥]|[.!?]")
_SENTENCE_END = re.compile(r"^[.!?]$")

# Function words left out of the key-noun comparison (with _COMMON).
_STOPWORDS = set(
    """am being have has had having doing very just only own same such too more most other some
    any each few all both up down out off again further once through during until while because
    people person thing things way something anything everything someone anyone often""".split()
) - set(_DIRECTION)

# Words that mean the same in a question; folded before the key-noun comparison.
_SYNONYMS = {
    "wrote": "write", "written": "write", "writes": "write", "author": "write", "writer": "write",
    "frequently": "often", "regularly": "often", "inhabitants": "live", "residents": "live", "money": "currency",
    "birthplace": "born", "birth": "born", "sum": "plus", "add": "plus", "total": "plus",
    "calculate": "compute", "tell": "compute", "spoken": "speak", "speaks": "speak",
    "apart": "distance", "far": "distance",
}
_NUMBER = re.compile(r"^\d[\d,]*(?:\.\d+)?$")


@dataclass(frozen=True, slots=True)
class QueryFeatures:
    """The meaning-critical parts of a query."""

    negations: tuple[tuple[str, int], ...]
    numbers: tuple[tuple[float, int], ...]
    units: tuple[tuple[str, int], ...]
    entities: frozenset[str]
    directions: tuple[tuple[str, int], ...]
    content: frozenset[str]
    """Content words (no function words, numbers, negations), synonyms folded."""
    words: frozenset[str]
    """Every lower-cased word (to find a name written in lower case in the other query)."""


def _normalise(text: str) -> str:
    text = text.replace("’", "'")
    lowered = text
    for symbol, word in _SYMBOLS.items():
        lowered = re.sub(re.escape(symbol), word, lowered, flags=re.IGNORECASE)
    # "n't" is a negation: "isn't" -> "is not" (and "can't"/"won't" -> "can not"/"will not").
    lowered = re.sub(r"\b(can|won)'t\b", lambda m: ("can" if m.group(1).lower() == "can" else "will") + " not", lowered, flags=re.IGNORECASE)
    lowered = re.sub(r"n't\b", " not", lowered, flags=re.IGNORECASE)
    # "20km", "5kg", "3.5%": split numbers from glued units.
    lowered = re.sub(r"(\d)([A-Za-z%])", r"\1 \2", lowered)
    return lowered


def _number_value(token: str) -> float | None:
    if _NUMBER.match(token):
        try:
            return float(token.replace(",", ""))
        except ValueError:
            # "1,2,3" style lists: keep the digits as one value, still comparable.
            return float(re.sub(r"\D", "", token) or 0)
    return None


def extract_features(text: str) -> QueryFeatures:
    """The features of one query."""
    normalised = _normalise(text)
    tokens = _TOKEN.findall(normalised)
    negations: Counter[str] = Counter()
    numbers: Counter[float] = Counter()
    units: Counter[str] = Counter()
    directions: Counter[str] = Counter()
    entities: set[str] = set()
    words: set[str] = set()
    content: set[str] = set()
    pending_words: list[float] = []  # "twenty one" -> 21, "three hundred" -> 300

    def flush() -> None:
        if pending_words:
            total, current = 0.0, 0.0
            for value in pending_words:
                if value in (100, 1000, 1_000_000, 1_000_000_000):
                    current = (current or 1) * value
                    if value >= 1000:
                        total += current
                        current = 0
                else:
                    current += value
            numbers[total + current] += 1
            pending_words.clear()

    for i, token in enumerate(tokens):
        bare = token.strip("'-").lower()
        stripped = re.sub(r"'s$", "", bare)
        if stripped:
            words.add(stripped)
        value = _number_value(token)
        if value is not None:
            flush()
            numbers[value] += 1
            continue
        if stripped in _NUMBER_WORDS and not (stripped == "second" and _is_time_unit_context(tokens, i)):
            if stripped == "one" and i > 0 and tokens[i - 1].lower() in {"which", "the", "this", "that", "each", "every", "no", "any"}:
                pass  # "which one", "the one": a pronoun, not the number 1
            else:
                pending_words.append(_NUMBER_WORDS[stripped])
                continue
        flush()
        if stripped in _NEGATIONS:
            negations[_NEGATION_CANON.get(stripped, "not" if stripped not in {"never", "none", "nothing", "nobody", "nowhere", "neither", "nor"} else stripped)] += 1
            continue
        unit = _UNITS.get(stripped)
        if unit is not None:
            units[unit] += 1
        direction = _DIRECTION.get(stripped)
        if direction is not None:
            directions[direction] += 1
        sentence_start = i == 0 or bool(_SENTENCE_END.search(normalised_before(tokens, i)))
        if token[:1].isupper() and not sentence_start and stripped not in _COMMON and len(stripped) > 1 and stripped not in _DIRECTION:
            entities.add(stripped)
        if stripped not in _COMMON and stripped not in _STOPWORDS and len(stripped) > 1 and unit is None:
            content.add(_SYNONYMS.get(stripped, stripped))
    flush()
    return QueryFeatures(
        negations=tuple(sorted(negations.items())),
        numbers=tuple(sorted(numbers.items())),
        units=tuple(sorted(units.items())),
        entities=frozenset(entities),
        directions=tuple(sorted(directions.items())),
        words=frozenset(words),
        content=frozenset(content),
    )


def _is_time_unit_context(tokens: list[str], i: int) -> bool:
    """"second" after a number is the unit ("5 second"), otherwise the ordinal."""
    return i > 0 and _number_value(tokens[i - 1]) is not None


def same_meaning(a: QueryFeatures, b: QueryFeatures) -> bool:
    """Whether two queries agree on every meaning-critical feature."""
    if a.negations != b.negations or a.numbers != b.numbers or a.units != b.units:
        return False
    if a.directions != b.directions:
        return False
    # A name in one query must be mentioned (in any case) in the other.
    if not (a.entities <= b.words and b.entities <= a.words):
        return False
    only_a, only_b = a.content - b.content, b.content - a.content
    if len(only_a) == 1 and len(only_b) == 1:
        return _inflections(next(iter(only_a)), next(iter(only_b)))
    return True


def _inflections(x: str, y: str) -> bool:
    """`use`/`used`, `capital`/`capitals`: one word is the other plus a short ending."""
    short, long = sorted((x, y), key=len)
    return len(short) >= 3 and long.startswith(short) and len(long) - len(short) <= 3


def normalised_before(tokens: list[str], i: int) -> str:
    """The token before position i (sentence ends are kept as tokens by the tokeniser)."""
    return tokens[i - 1] if i > 0 else ""
