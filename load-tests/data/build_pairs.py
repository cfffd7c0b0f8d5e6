"""Builds the semantic-cache benchmark sets from templates (deterministic: fixed seed).

* `paraphrase_pairs.jsonl`: two wordings of the same question (same entities, numbers, units);
  the cache SHOULD answer the second from the first.
* `near_miss_pairs.jsonl`: two questions that read alike but ask different things: a negation,
  a changed number, a swapped entity (names and common nouns), a changed unit, a flipped
  comparison; the cache must NEVER answer one from the other.

Each line: {"id", "family", "kind", "a", "b"}. Run: `python load-tests/data/build_pairs.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20261123

COUNTRIES = ["France", "Spain", "Germany", "Italy", "Japan", "Brazil", "Canada", "Egypt", "Kenya", "Norway",
             "Peru", "Chile", "India", "Mexico", "Poland", "Greece", "Turkey", "Vietnam", "Sweden", "Portugal"]
CITIES = ["Paris", "Madrid", "Berlin", "Rome", "Tokyo", "Lisbon", "Cairo", "Nairobi", "Oslo", "Lima",
          "Toronto", "Sydney", "Chicago", "Mumbai", "Warsaw", "Athens", "Istanbul", "Hanoi", "Stockholm", "Dublin"]
BOOKS = ["Hamlet", "Dracula", "Frankenstein", "Ulysses", "Beloved", "Emma", "Rebecca", "Lolita", "Walden", "Candide"]
PEOPLE = ["Marie Curie", "Isaac Newton", "Ada Lovelace", "Nikola Tesla", "Charles Darwin", "Alan Turing",
          "Galileo Galilei", "Rosalind Franklin", "Albert Einstein", "Grace Hopper"]
ELEMENTS = ["gold", "silver", "iron", "copper", "oxygen", "carbon", "helium", "sodium", "zinc", "neon"]
UNITS = [("miles", "kilometers"), ("kilograms", "pounds"), ("liters", "gallons"), ("feet", "meters"),
         ("inches", "centimeters"), ("ounces", "grams")]
TEMP = [("Celsius", "Fahrenheit"), ("Fahrenheit", "Celsius")]
ANIMALS = ["cat", "dog", "horse", "rabbit", "parrot", "hamster", "turtle", "goat"]

# family -> list of equivalent templates
PARAPHRASES: dict[str, list[str]] = {
    "capital": ["What is the capital of {country}?", "Which city is the capital of {country}?",
                "What's the capital city of {country}?", "Tell me the capital of {country}.",
                "Name the capital of {country}."],
    "language": ["What language is spoken in {country}?", "Which language do people speak in {country}?",
                 "What is the main language of {country}?", "What language do they speak in {country}?"],
    "currency": ["What currency does {country} use?", "What is the currency of {country}?",
                 "Which currency is used in {country}?", "What money do they use in {country}?"],
    "author": ["Who wrote {book}?", "Who is the author of {book}?", "Who was {book} written by?",
               "Which writer wrote {book}?"],
    "born": ["Where was {person} born?", "What is the birthplace of {person}?", "In which place was {person} born?"],
    "convert": ["How many {u2} are in {n} {u1}?", "Convert {n} {u1} to {u2}.", "What is {n} {u1} in {u2}?",
                "How many {u2} is {n} {u1}?"],
    "sum": ["What is {a} plus {b}?", "What is the sum of {a} and {b}?", "Add {a} and {b}.",
            "Calculate {a} plus {b}."],
    "symbol": ["What is the chemical symbol for {element}?", "What is the chemical symbol of {element}?",
               "Which chemical symbol does {element} have?", "Tell me the chemical symbol for {element}."],
    "pet": ["How often should I feed my {animal}?", "How frequently should I feed my {animal}?",
            "How many times should I feed my {animal}?", "What is a good feeding schedule for my {animal}?"],
    "boil": ["At what temperature does water boil in {t1}?", "What is the boiling point of water in {t1}?",
             "What temperature in {t1} does water boil at?"],
    "population": ["What is the population of {city}?", "How many people live in {city}?",
                   "How many inhabitants does {city} have?", "What's the number of people living in {city}?"],
    "distance": ["How far is {city} from {city2}?", "What is the distance between {city} and {city2}?",
                 "How far apart are {city} and {city2}?"],
}

# near-miss generators: (family, kind, template a, template b) with slot changers
NEAR: list[tuple[str, str, str, str]] = [
    ("capital", "negation", "What is the capital of {country}?", "What is not the capital of {country}?"),
    ("capital", "negation", "Which city is the capital of {country}?", "Which city is NOT the capital of {country}?"),
    ("language", "negation", "What language is spoken in {country}?", "What language isn't spoken in {country}?"),
    ("author", "negation", "Who wrote {book}?", "Who did not write {book}?"),
    ("pet", "negation", "Should I feed my {animal} chocolate?", "Should I never feed my {animal} chocolate?"),
    ("born", "negation", "Was {person} born in {city}?", "Was {person} not born in {city}?"),
    ("capital", "entity", "What is the capital of {country}?", "What is the capital of {country2}?"),
    ("currency", "entity", "What currency does {country} use?", "What currency does {country2} use?"),
    ("author", "entity", "Who wrote {book}?", "Who wrote {book2}?"),
    ("born", "entity", "Where was {person} born?", "Where was {person2} born?"),
    ("population", "entity", "What is the population of {city}?", "What is the population of {city2}?"),
    ("distance", "entity", "How far is {city} from {city2}?", "How far is {city} from {city3}?"),
    ("symbol", "noun", "What is the chemical symbol for {element}?", "What is the chemical symbol for {element2}?"),
    ("pet", "noun", "How often should I feed my {animal}?", "How often should I feed my {animal2}?"),
    ("sum", "number", "What is {a} plus {b}?", "What is {a} plus {b2}?"),
    ("sum", "number", "What is the sum of {a} and {b}?", "What is the sum of {a2} and {b}?"),
    ("convert", "number", "Convert {n} {u1} to {u2}.", "Convert {n2} {u1} to {u2}."),
    ("convert", "number_word", "How many {u2} are in {nw} {u1}?", "How many {u2} are in {nw2} {u1}?"),
    ("population", "number", "What was the population of {city} in {year}?", "What was the population of {city} in {year2}?"),
    ("convert", "unit", "How many {u2} are in {n} {u1}?", "How many {u3} are in {n} {u1}?"),
    ("convert", "unit", "Convert {n} {u1} to {u2}.", "Convert {n} {u4} to {u2}."),
    ("boil", "unit", "At what temperature does water boil in {t1}?", "At what temperature does water boil in {t2}?"),
    ("compare", "direction", "Which is larger, {country} or {country2}?", "Which is smaller, {country} or {country2}?"),
    ("compare", "direction", "Is {city} north of {city2}?", "Is {city} south of {city2}?"),
]
NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"]


def slots(rng: random.Random) -> dict[str, str]:
    c = rng.sample(COUNTRIES, 2)
    ci = rng.sample(CITIES, 3)
    b = rng.sample(BOOKS, 2)
    p = rng.sample(PEOPLE, 2)
    e = rng.sample(ELEMENTS, 2)
    a = rng.sample(ANIMALS, 2)
    u = rng.sample(UNITS, 2)
    t = rng.choice(TEMP)
    nw = rng.sample(NUMBER_WORDS, 2)
    x, y = rng.randint(2, 999), rng.randint(2, 999)
    n = rng.randint(2, 500)
    year = rng.randint(1950, 2020)
    return {
        "country": c[0], "country2": c[1], "city": ci[0], "city2": ci[1], "city3": ci[2],
        "book": b[0], "book2": b[1], "person": p[0], "person2": p[1], "element": e[0], "element2": e[1],
        "animal": a[0], "animal2": a[1], "u1": u[0][0], "u2": u[0][1], "u3": u[1][1], "u4": u[1][0],
        "t1": t[0], "t2": t[1], "nw": nw[0], "nw2": nw[1], "a": str(x), "b": str(y), "a2": str(x + rng.randint(1, 9)),
        "b2": str(y + rng.randint(1, 9)), "n": str(n), "n2": str(n + rng.randint(1, 50)),
        "year": str(year), "year2": str(year + rng.randint(1, 5)),
    }


def build(count: int = 240) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(SEED)
    paraphrases: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    families = sorted(PARAPHRASES)
    attempt = 0
    while len(paraphrases) < count:
        attempt += 1
        family = families[attempt % len(families)]
        first, second = rng.sample(PARAPHRASES[family], 2)
        s = slots(rng)
        pair = (first.format(**s), second.format(**s))
        if pair in seen:
            continue
        seen.add(pair)
        paraphrases.append({"id": f"p{len(paraphrases):03d}", "family": family, "kind": "paraphrase", "a": pair[0], "b": pair[1]})
    near: list[dict[str, str]] = []
    seen.clear()
    attempt = 0
    while len(near) < count:
        attempt += 1
        family, kind, first, second = NEAR[attempt % len(NEAR)]
        s = slots(rng)
        pair = (first.format(**s), second.format(**s))
        if pair in seen or pair[0] == pair[1]:
            continue
        seen.add(pair)
        near.append({"id": f"n{len(near):03d}", "family": family, "kind": kind, "a": pair[0], "b": pair[1]})
    return paraphrases, near


def main() -> None:
    paraphrases, near = build()
    for name, rows in (("paraphrase_pairs.jsonl", paraphrases), ("near_miss_pairs.jsonl", near)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{name}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
