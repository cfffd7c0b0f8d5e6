"""Secrets: cloud keys, private key blocks, API tokens, passwords in assignments and high-entropy
credentials, with Yelp's detect-secrets (Apache-2.0) used in-process.

detect-secrets is built to scan files with global settings and filters; here its plugins are
instantiated once and asked for the raw secret values in each line of the text
(`plugin.analyze_string`), which touches no global state, so detection is thread-safe. The
plugins' values are mapped back to offsets in the text. Unquoted high-entropy strings (detect-secrets
only looks inside quotes outside its ad-hoc mode, whose regex switch is not thread-safe) are found
by our own token regex and scored with the plugins' Shannon entropy and the library's heuristic
filters (sequential strings, UUIDs, templates).

Categories: `secret.aws_key`, `secret.cloud_key` (Azure, IBM, SoftLayer, Cloudant),
`secret.private_key` (the whole BEGIN...END block is redacted), `secret.token` (GitHub, GitLab,
Slack, Stripe, OpenAI, JWT, ...), `secret.password` (basic-auth URLs, `password = ...`),
`secret.high_entropy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string, is_templated_secret
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import BasePlugin
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import (
    CONFIG_DENYLIST_REGEX_TO_GROUP,
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
    KeywordDetector,
)
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from services.guardian.detector_base import LoopingDetector
from services.guardian.findings import Finding, TextKind

__all__ = ["SECRET_PLACEHOLDERS", "SecretDetector"]

SECRET_PLACEHOLDERS: dict[str, str] = {
    "secret.aws_key": "<AWS_KEY>",
    "secret.cloud_key": "<CLOUD_KEY>",
    "secret.private_key": "<PRIVATE_KEY>",
    "secret.token": "<TOKEN>",
    "secret.password": "<PASSWORD>",
    "secret.high_entropy": "<SECRET>",
}

#: (plugin, category, score): provider-specific formats are near-certain; keyword assignments less.
_PLUGINS: tuple[tuple[BasePlugin, str, float], ...] = (
    (AWSKeyDetector(), "secret.aws_key", 0.95),
    (AzureStorageKeyDetector(), "secret.cloud_key", 0.9),
    (IbmCloudIamDetector(), "secret.cloud_key", 0.8),
    (IbmCosHmacDetector(), "secret.cloud_key", 0.8),
    (SoftlayerDetector(), "secret.cloud_key", 0.8),
    (CloudantDetector(), "secret.cloud_key", 0.8),
    (PrivateKeyDetector(), "secret.private_key", 0.95),
    (GitHubTokenDetector(), "secret.token", 0.95),
    (GitLabTokenDetector(), "secret.token", 0.95),
    (SlackDetector(), "secret.token", 0.95),
    (StripeDetector(), "secret.token", 0.95),
    (OpenAIDetector(), "secret.token", 0.95),
    (SendGridDetector(), "secret.token", 0.95),
    (MailchimpDetector(), "secret.token", 0.9),
    (NpmDetector(), "secret.token", 0.95),
    (PypiTokenDetector(), "secret.token", 0.95),
    (DiscordBotTokenDetector(), "secret.token", 0.9),
    (TelegramBotTokenDetector(), "secret.token", 0.9),
    (TwilioKeyDetector(), "secret.token", 0.9),
    (SquareOAuthDetector(), "secret.token", 0.9),
    (ArtifactoryDetector(), "secret.token", 0.85),
    (JwtTokenDetector(), "secret.token", 0.9),
    (BasicAuthDetector(), "secret.password", 0.9),
)
_KEYWORD = KeywordDetector()
_KEYWORD_FORMS = (QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, CONFIG_DENYLIST_REGEX_TO_GROUP)
_BASE64 = Base64HighEntropyString()
_HEX = HexHighEntropyString()
#: Characters a plugin's secret can be made of: a line without one of the cheap hints below holds
#: no provider token, so most prose lines skip the 23 regex plugins.
_HINT = re.compile(r"[A-Za-z0-9+/_=-]{16,}|PRIVATE KEY|PuTTY|://[^\s/]*:[^\s/]*@|=|:")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_=.-])[A-Za-z0-9+/_=-]{20,}(?![A-Za-z0-9+/_=-])")
_SECRET_WORD = re.compile(r"\b(?:key|secret|token|passw(?:or)?d|pwd|credential|api|auth|bearer)", re.IGNORECASE)
_TOKEN_LIKE = frozenset({"secret.aws_key", "secret.cloud_key", "secret.token"})
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_+/=.-]*")
_END_KEY = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----")


@dataclass(frozen=True, slots=True)
class _Hit:
    category: str
    score: float
    start: int
    end: int


class SecretDetector(LoopingDetector):
    """detect-secrets' provider plugins, keyword assignments and entropy checks over each line."""

    name = "secrets"
    version = "1"
    cost = "cheap"

    def __init__(self, *, high_entropy: bool = True) -> None:
        self.high_entropy = high_entropy

    def detect(self, text: str, kind: TextKind) -> list[Finding]:
        hits: list[_Hit] = []
        offset = 0
        for line in text.splitlines(keepends=True):
            if len(line) >= 8 and _HINT.search(line):
                hits += self._line(text, line, offset)
            offset += len(line)
        return [
            Finding(h.category, h.score, self.detector_id, h.start, h.end, SECRET_PLACEHOLDERS[h.category])
            for h in _without_overlaps(hits)
        ]

    def _line(self, text: str, line: str, offset: int) -> list[_Hit]:
        hits: list[_Hit] = []
        for plugin, category, score in _PLUGINS:
            for value in set(plugin.analyze_string(line)):
                if not value:
                    continue
                for m in re.finditer(re.escape(value), line):
                    start, end = offset + m.start(), offset + m.end()
                    if category in _TOKEN_LIKE:
                        # Some plugins capture only a prefix (`ghp`) or stop early (JWT): the
                        # secret runs on to the end of the token.
                        end = offset + _TOKEN_TAIL.match(line, m.end()).end()
                        if end - start < 12:
                            continue
                    elif category == "secret.private_key":
                        dashes = line.rfind("-----", 0, m.start())  # the block starts at "-----BEGIN"
                        start = offset + dashes if dashes >= 0 else start
                        block_end = _END_KEY.search(text, end)
                        end = block_end.end() if block_end else offset + len(line.rstrip("\r\n"))
                    hits.append(_Hit(category, score, start, end))
        for form in _KEYWORD_FORMS:  # quoted assignments first; config style only if none
            found = False
            for value in _KEYWORD.analyze_string(line, denylist_regex_to_group=form):
                if not value or len(value) < 6 or is_templated_secret(value) or value.startswith("$"):
                    continue
                mixed = bool(re.search(r"\d", value)) + bool(re.search(r"[A-Za-z]", value)) + bool(
                    re.search(r"[^A-Za-z0-9]", value)
                )
                for m in re.finditer(re.escape(value), line):
                    found = True
                    hits.append(_Hit("secret.password", 0.8 if mixed >= 2 else 0.55, offset + m.start(), offset + m.end()))
            if found:
                break
        if self.high_entropy:
            hits += self._entropy(line, offset)
        return hits

    def _entropy(self, line: str, offset: int) -> list[_Hit]:
        hits = []
        for m in _TOKEN.finditer(line):
            token = m.group().strip("=") or m.group()
            if is_sequential_string(token) or is_potential_uuid(token) or is_templated_secret(token):
                continue
            if not (re.search(r"\d", token) and re.search(r"[A-Za-z]", token)):
                continue  # words, hyphenated phrases and digit runs are not credentials
            worded = _SECRET_WORD.search(line, 0, m.start()) is not None
            if re.fullmatch(r"[0-9a-fA-F]+", token):
                # Hex runs are usually hashes (commits, checksums): only near a secret-ish word.
                if len(token) >= 32 and worded and _HEX.calculate_shannon_entropy(token) > 3.0:
                    hits.append(_Hit("secret.high_entropy", 0.75, offset + m.start(), offset + m.end()))
            elif _BASE64.calculate_shannon_entropy(token) > (4.0 if worded else 4.5):
                hits.append(_Hit("secret.high_entropy", 0.8 if worded else 0.65, offset + m.start(), offset + m.end()))
        return hits


def _without_overlaps(items: list[_Hit]) -> list[_Hit]:
    """Of overlapping spans, the highest-scored (then longest) one, in text order. One sweep in
    start order (n log n: a text of 100 k characters can hold tens of thousands of matches)."""
    kept: list[_Hit] = []
    for h in sorted(items, key=lambda x: (x.start, -x.end)):
        if kept and h.start < kept[-1].end:
            last = kept[-1]
            if (h.score, h.end - h.start) > (last.score, last.end - last.start):
                kept[-1] = h
            continue
        kept.append(h)
    return kept
