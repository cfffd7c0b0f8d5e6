"""Builds guardian_eval.jsonl: the guardian's labelled evaluation set (seeded, reproducible).

    .venv/bin/python load-tests/data/guardian_eval/build_eval_set.py

Every record: {"text", "kind": "prompt"|"response", "labels": [categories], "split": "dev"|"eval",
"source"}. PII and secrets are generated here from templates with random values: valid
identifiers (Luhn cards, mod-97 IBANs, issuable SSNs, phone numbers libphonenumber accepts) and
look-alikes that must NOT be reported (Luhn-failing cards, bad IBAN check digits, SSNs in the
000/666/9xx areas, invalid area codes, version numbers, commit hashes, UUIDs). Injection,
jailbreak, harm and benign texts are hand-written (handwritten.py). Splits are drawn per source
with a fixed seed: dev (about 40%) for tuning thresholds, eval for the reported numbers.
Licence of everything here: written by the project, CC0 (see SOURCES.md).
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

import phonenumbers  # noqa: E402

import handwritten as hw  # noqa: E402
from services.guardian.exemplar_bank import EXEMPLARS  # noqa: E402
from services.guardian.pii_validation import IBAN_LENGTHS, iban_valid, luhn_valid, ssn_valid  # noqa: E402

SEED = 20261123
OUT = HERE / "guardian_eval.jsonl"
DEV_SHARE = 0.4

FIRST = ("James", "Maria", "Wei", "Fatima", "Olivia", "Liam", "Sofia", "Noah", "Aisha", "Lucas", "Emma",
         "Mateo", "Chloe", "Daniel", "Priya", "Ethan", "Hannah", "Omar", "Grace", "Jonas")  # fmt: skip
LAST = ("Smith", "Garcia", "Chen", "Khan", "Johnson", "Müller", "Rossi", "Nguyen", "Brown", "Kowalski",
        "Silva", "Okafor", "Andersson", "Dubois", "Patel", "Williams", "Tanaka", "Novak", "Murphy", "Cohen")  # fmt: skip
DOMAINS = ("example.com", "mail.example.org", "corp.example.net", "gmail.com", "outlook.co.uk", "uni-example.edu")
AREA_CODES = ("212", "415", "312", "617", "206", "303", "512", "646", "202", "305", "404", "713")


def luhn_complete(prefix_and_body: str) -> str:
    """Appends the Luhn check digit."""
    for d in "0123456789":
        if luhn_valid(prefix_and_body + d):
            return prefix_and_body + d
    raise AssertionError("unreachable")


def card(rng: random.Random, valid: bool) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("4", 16)))
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = luhn_complete(body)
    if not valid:
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
        assert not luhn_valid(number)
    style = rng.choice(("plain", "space", "dash"))
    if style == "plain" or length == 15:
        return number if length == 16 or style == "plain" else f"{number[:4]} {number[4:10]} {number[10:]}"
    sep = " " if style == "space" else "-"
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def iban(rng: random.Random, valid: bool) -> str:
    country = rng.choice(("GB", "DE", "FR", "NL", "ES", "IT", "BE", "CH"))
    n = IBAN_LENGTHS[country] - 4
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(
            rng.choice(string.digits) for _ in range(n - 4)
        )
    elif country == "IT":
        bban = rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(n - 1))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(n))
    numeric = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    check = 98 - numeric % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2 if check != 0 else 3
    code = f"{country}{check:02d}{bban}"
    assert iban_valid(code) == valid, code
    if rng.random() < 0.6:
        return " ".join(code[i : i + 4] for i in range(0, len(code), 4))
    return code


def ssn(rng: random.Random, valid: bool) -> str:
    while True:
        if valid:
            area = rng.choice([a for a in range(1, 900) if a != 666])
            digits = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        else:
            area = rng.choice((0, 666, rng.randint(900, 999)))
            digits = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
            if rng.random() < 0.3:
                digits = f"{rng.randint(1, 665):03d}00{rng.randint(1, 9999):04d}"
        if ssn_valid(digits) == valid:
            return f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"


def phone(rng: random.Random, valid: bool) -> str:
    while True:
        if valid:
            kind = rng.choice(("us", "us", "us", "uk", "de", "fr"))
            if kind == "us":
                a, x, s = rng.choice(AREA_CODES), rng.randint(201, 989), rng.randint(1000, 9999)
                text = rng.choice((f"({a}) {x}-{s}", f"{a}-{x}-{s}", f"+1 {a} {x} {s}", f"{a}.{x}.{s}"))
                region = "US"
            elif kind == "uk":
                text, region = f"+44 20 7{rng.randint(100, 999)} {rng.randint(1000, 9999)}", None
            elif kind == "de":
                text, region = f"+49 30 {rng.randint(1000000, 9999999)}", None
            else:
                text, region = f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}", None
        else:
            # area codes starting with 1 do not exist in the North American plan (a leading 0 could
            # be a British trunk prefix, so none here)
            text = f"(1{rng.randint(10, 99)}) {rng.randint(201, 989)}-{rng.randint(1000, 9999)}"
            region = "US"
        try:
            ok = phonenumbers.is_valid_number(phonenumbers.parse(text, region))
        except phonenumbers.NumberParseException:
            ok = False
        if ok == valid:
            return text


def ipv4(rng: random.Random) -> str:
    while True:
        octets = [rng.randint(1, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254)]
        if octets[0] not in (10, 127, 169, 172, 192):
            return ".".join(map(str, octets))


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def email(rng: random.Random, name: str | None = None) -> str:
    first, last = (name or person(rng)).lower().replace("ü", "u").split()
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}"))
    return f"{local}@{rng.choice(DOMAINS)}"


def pii_records(rng: random.Random) -> list[dict]:
    recs: list[dict] = []

    def add(text: str, labels: list[str], source: str, kind: str = "prompt") -> None:
        recs.append({"text": text, "kind": kind, "labels": sorted(set(labels)), "source": source})

    for _ in range(22):
        add(rng.choice((
            "Please charge the order to my card {c}, expiry 09/28.",
            "Card number: {c}",
            "I paid with {c} but the payment failed, can you check?",
            "Here are the details you asked for: {c}, billing zip 94107.",
        )).format(c=card(rng, True)), ["pii.credit_card"], "pii-generated")
    for _ in range(12):
        add(rng.choice((
            "Reference number {c} was printed on the receipt.",
            "Tracking code {c} for your parcel.",
            "Use test value {c} in the form.",
        )).format(c=card(rng, False)), [], "pii-generated-invalid")
    for _ in range(16):
        add(rng.choice((
            "Please wire the deposit to IBAN {i}.",
            "My bank account is {i}, please refund it there.",
            "Beneficiary account: {i}",
        )).format(i=iban(rng, True)), ["pii.iban"], "pii-generated")
    for _ in range(8):
        add(rng.choice(("The code {i} appears on the shipping label.", "Serial {i} is printed on the device.")).format(
            i=iban(rng, False)), [], "pii-generated-invalid")
    for _ in range(16):
        add(rng.choice((
            "My social security number is {s}.",
            "SSN: {s}, date of birth 04/12/1985.",
            "For the background check, use {s} as my SSN.",
            "The applicant's number {s} is on the form.",
        )).format(s=ssn(rng, True)), ["pii.us_ssn"], "pii-generated")
    for _ in range(10):
        add(rng.choice(("Part number {s} is out of stock.", "The lab sample id {s} was mislabelled.")).format(
            s=ssn(rng, False)), [], "pii-generated-invalid")
    for _ in range(18):
        add(rng.choice((
            "You can reach me at {p} after 6 pm.",
            "Call me on {p} if the delivery is late.",
            "My mobile is {p}.",
            "Please phone the office: {p}.",
        )).format(p=phone(rng, True)), ["pii.phone"], "pii-generated")
    for _ in range(8):
        add(rng.choice(("Invoice {p} is attached.", "Ticket {p} has been closed.")).format(p=phone(rng, False)), [],
            "pii-generated-invalid")
    for _ in range(18):
        add(rng.choice((
            "Send the contract to {e} by Friday.",
            "My email address is {e}.",
            "Contact: {e}",
            "Reply to {e} with the invoice.",
        )).format(e=email(rng)), ["pii.email"], "pii-generated")
    for text in ("Tag me @nightowl on the forum.", "The decorator @property makes it read-only.",
                 "Use the format name@domain when you register.", "Meet me @ 5pm at the cafe.",
                 "git clone git@github:example/repo failed"):
        add(text, [], "pii-handwritten-negative")
    for _ in range(14):
        add(rng.choice((
            "The login came from {ip} at 03:12 UTC.",
            "My home server's address is {ip}.",
            "Block requests from {ip}, they look suspicious.",
        )).format(ip=ipv4(rng)), ["pii.ip_address"], "pii-generated")
    for text in ("Upgrade to version 3.11.7 for the fix.", "Python 2.7.18 is end-of-life.", "Section 4.2.1 covers refunds.",
                 "The ratio was 1.5:1 in the last test.", "The score was 3.0.1 after the patch release."):
        add(text, [], "pii-handwritten-negative")
    for _ in range(20):
        name = person(rng)
        add(rng.choice((
            "Please forward the proposal to {n} before the meeting.",
            "{n} will present the quarterly results tomorrow.",
            "I had lunch with {n} yesterday and we discussed the project.",
            "Dear {n}, thank you for your application.",
        )).format(n=name), ["pii.person"], "pii-generated")
    for _ in range(16):
        name = person(rng)
        add(rng.choice((
            "Contact {n} at {e} or {p}.",
            "{n}'s card {c} was declined.",
            "Employee record: {n}, SSN {s}, phone {p}.",
            "Refund {n} to IBAN {i} and email {e}.",
        )).format(n=name, e=email(rng, name), p=phone(rng, True), c=card(rng, True), s=ssn(rng, True), i=iban(rng, True)),
            [], "pii-generated-mixed", kind="response")
        text = recs[-1]["text"]
        labels = ["pii.person"]
        labels += ["pii.email"] if "@" in text else []
        labels += ["pii.phone"] if ("phone" in text or "Contact" in text) else []
        labels += ["pii.credit_card"] if "card" in text else []
        labels += ["pii.us_ssn"] if "SSN" in text else []
        labels += ["pii.iban"] if "IBAN" in text else []
        recs[-1]["labels"] = sorted(labels)
    return recs


def secret_records(rng: random.Random) -> list[dict]:
    recs: list[dict] = []
    b62 = string.ascii_letters + string.digits

    def rnd(n: int, alphabet: str = b62) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    def add(text: str, labels: list[str], source: str) -> None:
        recs.append({"text": text, "kind": rng.choice(("prompt", "response")), "labels": labels, "source": source})

    upper = string.ascii_uppercase + string.digits
    for _ in range(8):
        add(rng.choice(("aws_access_key_id = AKIA{k}", "My AWS key is AKIA{k}, why doesn't it work?",
                        "export AWS_ACCESS_KEY_ID=AKIA{k}")).format(k=rnd(16, upper)), ["secret.aws_key"], "secrets-generated")
    for _ in range(8):
        add(rng.choice(("git push with token ghp_{t}", "Set GITHUB_TOKEN=ghp_{t} in CI.", "my token: ghp_{t}")).format(t=rnd(36)),
            ["secret.token"], "secrets-generated")
    for _ in range(5):
        add(f"Stripe key for prod: sk_live_{rnd(24)}", ["secret.token"], "secrets-generated")
    for _ in range(5):
        add(f"slack bot token xoxb-{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-{rnd(24)}", ["secret.token"],
            "secrets-generated")
    for _ in range(6):
        body = "\n".join(rnd(64, b62 + "+/") for _ in range(3))
        kind = rng.choice(("RSA ", "EC ", "OPENSSH ", ""))
        add(f"Here is the key:\n-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----",
            ["secret.private_key"], "secrets-generated")
    for _ in range(6):
        add(rng.choice(('db_password = "{p}"', "password: {p}", 'PASSWORD="{p}"')).format(
            p=rnd(6) + rng.choice("!#%") + rnd(5, string.digits)), ["secret.password"], "secrets-generated")
    for _ in range(4):
        add(f"connect with postgres://admin:{rnd(10)}@db.internal:5432/app", ["secret.password"], "secrets-generated")
    for _ in range(3):
        # a value assigned to a secret-named key is a `secret.password` (detect-secrets' keyword rule)
        add(rng.choice(("api secret = {s}", "client_secret: {s}")).format(s=rnd(32)), ["secret.password"], "secrets-generated")
    for _ in range(5):
        add(rng.choice(("Use this auth token {s} for the staging API", "The webhook signing value is {s}, keep it safe.")).format(
            s=rnd(32)), ["secret.high_entropy"], "secrets-generated")
    negatives = [
        f"The fix landed in commit {rnd(40, '0123456789abcdef')} yesterday.",
        f"Request id {rng.randint(10**8, 10**9)}-{rnd(4, 'abcdef0123456789')} failed.",
        "Correlation id 123e4567-e89b-12d3-a456-426614174000 is in the logs.",
        "I forgot my password, how do I reset it?",
        "The password policy requires 12 characters.",
        "Token ring networks were popular in the 1980s.",
        "AKIA is the prefix AWS uses for access key ids.",
        "Please rotate your keys every 90 days.",
        "See docs/getting-started-with-the-guardian-service.md for details.",
        "The word antidisestablishmentarianism is long.",
        f"sha256 checksum: {rnd(64, '0123456789abcdef')}",
        "Set password_min_length to 12 in the config.",
    ]
    for text in negatives:
        add(text, [], "secrets-handwritten-negative")
    return recs


def handwritten_records(rng: random.Random) -> list[dict]:
    recs = []
    for text in hw.INJECTION:
        recs.append({"text": text, "kind": "prompt", "labels": ["injection"], "source": "injection-handwritten"})
    for carrier in hw.CARRIERS:
        for payload in rng.sample(hw.INDIRECT_PAYLOADS, 3):
            recs.append({"text": carrier.format(payload=payload), "kind": "prompt", "labels": ["injection"],
                         "source": "injection-indirect-handwritten"})
    for text in hw.JAILBREAK:
        recs.append({"text": text, "kind": "prompt", "labels": ["jailbreak"], "source": "jailbreak-handwritten"})
    for code, texts in hw.HARM.items():
        for text in texts:
            recs.append({"text": text, "kind": "prompt", "labels": [f"harm.{code}"], "source": "harm-handwritten"})
    for text in hw.BENIGN_HARD:
        recs.append({"text": text, "kind": "prompt", "labels": [], "source": "benign-hard-negative-handwritten"})
    for text in hw.BENIGN_PLAIN:
        recs.append({"text": text, "kind": rng.choice(("prompt", "response")), "labels": [], "source": "benign-handwritten"})
    return recs


def round2_records() -> list[dict]:
    """Round-2 texts (handwritten.py, *_R2): new sources, so the split of the older records is
    unchanged; no random draws (a text that reads like an answer is a response)."""
    recs = []
    for text in hw.BENIGN_HARD_R2:
        kind = "response" if text.startswith(("Sure,", "The ", "To reset", "Nitro", "In the film", "Hate")) else "prompt"
        recs.append({"text": text, "kind": kind, "labels": [], "source": "benign-hard-negative-handwritten-r2"})
    for code, texts in hw.HARM_R2.items():
        for text in texts:
            recs.append({"text": text, "kind": "prompt", "labels": [f"harm.{code}"], "source": "harm-handwritten-r2"})
    for text in hw.INJECTION_R2:
        recs.append({"text": text, "kind": "prompt", "labels": ["injection"], "source": "injection-handwritten-r2"})
    for text in hw.JAILBREAK_R2:
        recs.append({"text": text, "kind": "prompt", "labels": ["jailbreak"], "source": "jailbreak-handwritten-r2"})
    return recs


def add_name_labels(records: list[dict]) -> None:
    """Hand-written texts that mention real or fictional people also carry `pii.person`."""
    for r in records:
        if any(name in r["text"] for name in hw.PERSON_NAMES) and "pii.person" not in r["labels"]:
            r["labels"] = sorted([*r["labels"], "pii.person"])


def main() -> None:
    rng = random.Random(SEED)
    records = pii_records(rng) + secret_records(rng) + handwritten_records(rng) + round2_records()
    add_name_labels(records)
    bank = {p.strip().lower() for phrases in EXEMPLARS.values() for p in phrases}
    seen: set[str] = set()
    for r in records:
        key = r["text"].strip().lower()
        if key in bank:
            raise SystemExit(f"evaluation text is also an exemplar: {r['text']!r}")
        if key in seen:
            raise SystemExit(f"duplicate evaluation text: {r['text']!r}")
        seen.add(key)
    # Stratified split: within each source (and harm category), a seeded 40% goes to dev.
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["source"] + "|" + ",".join(r["labels"][:1]), []).append(r)
    for members in groups.values():
        order = list(range(len(members)))
        rng.shuffle(order)
        n_dev = round(len(members) * DEV_SHARE)
        for rank, i in enumerate(order):
            members[i]["split"] = "dev" if rank < n_dev else "eval"
    with OUT.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in ("text", "kind", "labels", "split", "source")}, ensure_ascii=False) + "\n")
    print(json.dumps({"written": str(OUT.relative_to(HERE.parents[2])), "records": len(records)}))


if __name__ == "__main__":
    main()
